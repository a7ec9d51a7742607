//! systemd readiness and watchdog notifications (`Type=notify`,
//! `WatchdogSec=` in deploy/systemd/ferry-agent.service).
//!
//! The protocol is one datagram per state change to `$NOTIFY_SOCKET`; outside
//! systemd the variable is unset and every call here does nothing.

use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send(path.as_encoded_bytes(), state.as_bytes())?;
    Ok(true)
}

#[cfg(target_os = "linux")]
fn send(path: &[u8], msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let sock = UnixDatagram::unbound()?;
    // A leading '@' names an abstract-namespace socket.
    let addr = match path.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
        _ => SocketAddr::from_pathname(std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path),
        ))?,
    };
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send(_path: &[u8], _msg: &[u8]) -> std::io::Result<()> {
    Ok(())
}

/// The watchdog interval systemd asked for, if any (`WATCHDOG_USEC`).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Tells systemd the agent serves, and keeps the watchdog fed from the async
/// runtime: if the runtime stalls, the pings stop and systemd restarts us.
pub fn ready_and_watchdog() {
    match notify("READY=1") {
        Ok(true) => tracing::info!("notified systemd: ready"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not notify systemd"),
    }
    if let Some(every) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                if let Err(e) = notify("WATCHDOG=1") {
                    tracing::warn!(error = %e, "watchdog notification failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn sends_ready_to_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str().as_encoded_bytes(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
