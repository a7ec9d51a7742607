//! A small closed-loop HTTP/1.1 load generator for the benchmark scripts:
//! N connections, each sending the same POST back to back (keep-alive when
//! the server allows it), for a fixed time. Prints one JSON line with
//! requests/s and latency percentiles.
//!
//!   cargo run --release -p ferry-agent --example loadgen -- \
//!     --addr 127.0.0.1:8081 --path /v2/models/m/infer --body req.json \
//!     --concurrency 16 --duration 10
//!
//! One event loop drives every connection, as wrk does: on a 2-core machine
//! a thread per connection would spend the cores on context switches that
//! the server under test needs. `--threads N` runs N loops instead.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    path: String,
    body: Vec<u8>,
    content_type: String,
    concurrency: usize,
    threads: usize,
    duration: f64,
    warmup: f64,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8081".parse().unwrap(),
        path: "/".into(),
        body: Vec::new(),
        content_type: "application/json".into(),
        concurrency: 1,
        threads: 1,
        duration: 10.0,
        warmup: 1.0,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let (k, val) = (&v[i], &v[i + 1]);
        match k.as_str() {
            "--addr" => a.addr = val.parse().expect("--addr host:port"),
            "--path" => a.path = val.clone(),
            "--body" => a.body = std::fs::read(val).expect("--body file"),
            "--content-type" => a.content_type = val.clone(),
            "--concurrency" => a.concurrency = val.parse().expect("--concurrency N"),
            "--threads" => a.threads = val.parse().expect("--threads N"),
            "--duration" => a.duration = val.parse().expect("--duration seconds"),
            "--warmup" => a.warmup = val.parse().expect("--warmup seconds"),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    a
}

struct Conn {
    s: TcpStream,
    /// Bytes read and not yet consumed, `buf[at..filled]`: one buffer per
    /// connection for its whole life, so a round trip allocates nothing and
    /// leaves the cores to the server under test.
    buf: Vec<u8>,
    at: usize,
    filled: usize,
}

async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(Conn {
        s,
        buf: vec![0; 64 * 1024],
        at: 0,
        filled: 0,
    })
}

/// Turns off delayed ACKs until the next receive (Linux re-arms them). A
/// server that writes its response in two segments with Nagle on (uvicorn,
/// under mlflow) would otherwise wait up to 40 ms for our ACK on every
/// keep-alive request: a stall of the client's making, not the server's.
/// Set once per request, before the response's first segment arrives.
fn quickack(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
}

impl Conn {
    /// Reads more bytes after what is buffered; compacts or grows first
    /// when the buffer is full.
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.filled == self.buf.len() {
            if self.at > 0 {
                self.buf.copy_within(self.at..self.filled, 0);
                self.filled -= self.at;
                self.at = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.s.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.filled += n;
        Ok(())
    }

    /// The next CRLF-terminated line, without its terminator, as a range of
    /// `buf`; consumed.
    async fn line(&mut self) -> std::io::Result<std::ops::Range<usize>> {
        let mut from = self.at;
        loop {
            if let Some(i) = self.buf[from..self.filled].iter().position(|&b| b == b'\n') {
                let start = self.at;
                let end = from + i;
                self.at = end + 1;
                let end = if end > start && self.buf[end - 1] == b'\r' {
                    end - 1
                } else {
                    end
                };
                return Ok(start..end);
            }
            from = self.filled;
            let before = self.at;
            self.fill().await?;
            // `fill` may have moved the unread bytes to the front.
            from -= before - self.at;
        }
    }

    /// Skips `n` bytes of body.
    async fn skip(&mut self, mut n: usize) -> std::io::Result<()> {
        loop {
            let have = (self.filled - self.at).min(n);
            self.at += have;
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.at = 0;
            self.filled = 0;
            self.fill().await?;
        }
    }
}

fn header_is(line: &[u8], name: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&b| b == b':')?;
    line[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(name)
        .then(|| String::from_utf8_lossy(line[colon + 1..].trim_ascii()).to_ascii_lowercase())
}

/// Sends one request and reads the whole response. Returns (status, keep
/// the connection).
async fn roundtrip(c: &mut Conn, req: &[u8]) -> std::io::Result<(u16, bool)> {
    c.s.write_all(req).await?;
    quickack(&c.s);
    let status_line = c.line().await?;
    let status = std::str::from_utf8(&c.buf[status_line])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut len, mut chunked, mut keep) = (0usize, false, true);
    loop {
        let r = c.line().await?;
        let l = &c.buf[r];
        if l.is_empty() {
            break;
        }
        // Only the three headers that frame the body are looked at; the
        // rest cost a byte compare each.
        if let Some(v) = header_is(l, b"content-length") {
            len = v.parse().unwrap_or(0);
        } else if let Some(v) = header_is(l, b"transfer-encoding") {
            chunked = v.contains("chunked");
        } else if let Some(v) = header_is(l, b"connection") {
            keep = v != "close";
        }
    }
    if chunked {
        loop {
            let r = c.line().await?;
            let n = std::str::from_utf8(&c.buf[r])
                .ok()
                .and_then(|l| usize::from_str_radix(l.trim(), 16).ok())
                .unwrap_or(0);
            c.skip(n + 2).await?;
            if n == 0 {
                break;
            }
        }
    } else {
        c.skip(len).await?;
    }
    Ok((status, keep))
}

/// One closed-loop connection until `end`; latencies after `warm_until`.
async fn client(
    addr: SocketAddr,
    req: std::sync::Arc<Vec<u8>>,
    warm_until: Instant,
    end: Instant,
) -> (Vec<u32>, u64) {
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut errors = 0u64;
    let mut conn = connect(addr).await.ok();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                conn = connect(addr).await.ok();
                if conn.is_none() {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
        };
        let t0 = Instant::now();
        let r = roundtrip(c, &req).await;
        let us = t0.elapsed().as_micros() as u32;
        let measuring = t0 >= warm_until;
        match r {
            Ok((200, keep)) => {
                if measuring {
                    lat.push(us);
                }
                if !keep {
                    conn = None;
                }
            }
            Ok((_, keep)) => {
                if measuring {
                    errors += 1;
                }
                if !keep {
                    conn = None;
                }
            }
            Err(_) => {
                if measuring {
                    errors += 1;
                }
                conn = None;
            }
        }
    }
    (lat, errors)
}

fn main() {
    let a = args();
    let mut req = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
        a.path,
        a.addr,
        a.content_type,
        a.body.len()
    )
    .into_bytes();
    req.extend_from_slice(&a.body);
    let req = std::sync::Arc::new(req);
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(a.threads);
        b
    }
    .enable_all()
    .build()
    .unwrap();
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(a.warmup);
    let end = warm_until + Duration::from_secs_f64(a.duration);
    let results: Vec<(Vec<u32>, u64)> = rt.block_on(async {
        let tasks: Vec<_> = (0..a.concurrency)
            .map(|_| tokio::spawn(client(a.addr, req.clone(), warm_until, end)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut all = Vec::new();
    let mut errors = 0;
    for (l, e) in results {
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            0
        } else {
            all[((all.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        "{{\"concurrency\":{},\"requests\":{},\"errors\":{},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        a.concurrency,
        all.len(),
        errors,
        all.len() as f64 / a.duration,
        pct(0.5),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0)
    );
}
