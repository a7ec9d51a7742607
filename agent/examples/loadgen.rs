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

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    s: BufReader<TcpStream>,
}

async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(Conn {
        s: BufReader::with_capacity(16 * 1024, s),
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

/// Sends one request and reads the whole response. Returns (status, keep
/// the connection).
async fn roundtrip(c: &mut Conn, req: &[u8], line: &mut String) -> std::io::Result<(u16, bool)> {
    c.s.get_mut().write_all(req).await?;
    quickack(c.s.get_ref());
    line.clear();
    if c.s.read_line(line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut len, mut chunked, mut keep) = (0usize, false, true);
    loop {
        line.clear();
        c.s.read_line(line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => keep = v != "close",
                _ => {}
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            c.s.read_line(line).await?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            let mut buf = vec![0; n + 2];
            c.s.read_exact(&mut buf).await?;
            if n == 0 {
                break;
            }
        }
    } else {
        let mut buf = vec![0; len];
        c.s.read_exact(&mut buf).await?;
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
    let mut line = String::new();
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
        let r = roundtrip(c, &req, &mut line).await;
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
