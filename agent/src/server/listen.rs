//! Listeners: the inference port on TCP (on the caller's runtime, or dealt
//! round robin to per-core single-threaded loops) and optionally a Unix
//! socket; the admin API on its own Unix socket and optional loopback TCP
//! port. Graceful shutdown for all.

use super::admin_access::bind_admin_socket;
use super::{ServeError, ServeOptions};
use axum::Router;
use std::net::SocketAddr;

/// Bound listeners, ready to serve.
pub struct Bound {
    tcp: Option<std::net::TcpListener>,
    tcp_loops: usize,
    unix: Option<tokio::net::UnixListener>,
    admin_unix: Option<tokio::net::UnixListener>,
    admin_tcp: Option<tokio::net::TcpListener>,
    pub local_addr: Option<SocketAddr>,
    /// Where the admin TCP port was bound (port 0 picks one).
    pub admin_addr: Option<SocketAddr>,
}

/// The routers each listener serves.
pub(super) struct Apps {
    /// The inference port (checked: host, origin, content type).
    pub tcp: Router,
    /// The inference API on its Unix socket.
    pub unix: Router,
    /// The admin API on its Unix socket.
    pub admin: Router,
    /// The admin API on its TCP port (token and checks), when configured.
    pub admin_tcp: Option<Router>,
}

async fn bind_tcp(a: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(a)
        .await
        .map_err(|source| ServeError::Bind {
            what: a.to_string(),
            source,
        })
}

pub async fn bind(opts: &ServeOptions) -> Result<Bound, ServeError> {
    if opts.listen.is_none() && opts.unix_socket.is_none() {
        return Err(ServeError::NoListener);
    }
    if opts.admin_listen.is_some() && opts.admin_token.is_none() {
        return Err(ServeError::NoAdminToken);
    }
    let tcp = match opts.listen {
        Some(a) => {
            let l = bind_tcp(a).await?;
            Some(l.into_std().map_err(|source| ServeError::Bind {
                what: a.to_string(),
                source,
            })?)
        }
        None => None,
    };
    let admin_tcp = match opts.admin_listen {
        Some(a) => Some(bind_tcp(a).await?),
        None => None,
    };
    let admin_unix = match &opts.admin_socket {
        Some(p) => Some(bind_admin_socket(p)?),
        None => None,
    };
    let unix = match &opts.unix_socket {
        Some(p) => {
            // A stale socket from a previous run would make bind fail.
            let _ = std::fs::remove_file(p);
            Some(
                tokio::net::UnixListener::bind(p).map_err(|source| ServeError::Bind {
                    what: p.display().to_string(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let local_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let admin_addr = admin_tcp.as_ref().and_then(|l| l.local_addr().ok());
    Ok(Bound {
        tcp,
        tcp_loops: opts.tcp_loops.max(1),
        unix,
        admin_unix,
        admin_tcp,
        local_addr,
        admin_addr,
    })
}

/// axum over `l` until `stop` fires.
async fn serve_on<L>(
    l: L,
    app: Router,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(l, app)
        .with_graceful_shutdown(async move {
            let _ = stop.recv().await;
        })
        .await
}

type Handed = (std::net::TcpStream, SocketAddr);

/// One serving loop's share of the connections, as axum's listener.
struct Dealt {
    rx: tokio::sync::mpsc::UnboundedReceiver<Handed>,
    local: SocketAddr,
}

impl axum::serve::Listener for Dealt {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.recv().await {
                Some((s, a)) => match tokio::net::TcpStream::from_std(s) {
                    Ok(s) => return (s, a),
                    Err(e) => tracing::warn!(error = %e, peer = %a, "dropping a connection"),
                },
                // The acceptor stopped: graceful shutdown ends this loop.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts on `l` and deals connections to `loops` in turn, until `stop`.
/// Round robin keeps the loops evenly loaded, which a kernel hash over
/// `SO_REUSEPORT` listeners did not (docs/BENCHMARKS.md).
async fn deal(
    l: std::net::TcpListener,
    loops: Vec<tokio::sync::mpsc::UnboundedSender<Handed>>,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::from_std(l)?;
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = stop.recv() => return Ok(()),
            r = l.accept() => match r {
                Ok((s, peer)) => {
                    // Nagle would add up to 40 ms to small responses.
                    let _ = s.set_nodelay(true);
                    let s = s.into_std()?;
                    if let Some(tx) = loops.get(next % loops.len()) {
                        if tx.send((s, peer)).is_err() {
                            tracing::warn!(peer = %peer, "a serving loop has stopped");
                        }
                    }
                    next = next.wrapping_add(1);
                }
                // Out of descriptors and the like: back off, as axum does.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves `app` until `shutdown` resolves, then drains in-flight requests.
pub(super) async fn run(
    bound: Bound,
    apps: Apps,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    let mut threads = Vec::new();
    match (bound.tcp, bound.tcp_loops) {
        (None, _) => {}
        (Some(l), 1) => {
            let stop = tx.subscribe();
            let app = apps.tcp.clone();
            tasks.push(tokio::spawn(async move {
                let l = tokio::net::TcpListener::from_std(l)?;
                // Nagle would add up to 40 ms to small responses.
                let l = axum::serve::ListenerExt::tap_io(l, |s| {
                    let _ = s.set_nodelay(true);
                });
                serve_on(l, app, stop).await
            }));
        }
        (Some(l), n) => {
            let local = l.local_addr()?;
            let mut senders = Vec::with_capacity(n);
            for i in 0..n {
                let (conn_tx, rx) = tokio::sync::mpsc::unbounded_channel();
                senders.push(conn_tx);
                let (app, stop) = (apps.tcp.clone(), tx.subscribe());
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name(format!("ferry-http-{i}"))
                    .spawn(move || {
                        let r = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .and_then(|rt| rt.block_on(serve_on(Dealt { rx, local }, app, stop)));
                        let _ = done_tx.send(r);
                    })?;
                threads.push(done_rx);
            }
            tasks.push(tokio::spawn(deal(l, senders, tx.subscribe())));
        }
    }
    if let Some(l) = bound.unix {
        tasks.push(tokio::spawn(serve_on(l, apps.unix, tx.subscribe())));
    }
    if let Some(l) = bound.admin_unix {
        tasks.push(tokio::spawn(serve_on(l, apps.admin, tx.subscribe())));
    }
    if let (Some(l), Some(app)) = (bound.admin_tcp, apps.admin_tcp) {
        tasks.push(tokio::spawn(serve_on(l, app, tx.subscribe())));
    }
    shutdown.await;
    let _ = tx.send(());
    for t in tasks {
        match t.await {
            Ok(r) => r?,
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    for t in threads {
        match t.await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::other("a serving thread stopped")),
        }
    }
    Ok(())
}
