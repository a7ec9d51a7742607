//! `ferry broker certs`: certificates for an external Mosquitto that
//! authenticates devices by the client certificates the fleet CA issued
//! them (`deploy/mosquitto/`): the broker's server certificate, the CA file
//! it trusts (the fleet CA), and client certificates for the server's
//! ingest (`ferry-control`) and any third-party consumer named.

use crate::fleet::ca::{pem, DeviceCa};
use anyhow::Context;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum BrokerCmd {
    /// Issue, from the server's fleet CA (DATA/fleet/ca.key), OUT/ca.pem, OUT/server.pem + server.key for the broker, and OUT/NAME.pem + NAME.key per --client (default: ferry-control, the server's ingest)
    Certs {
        /// The server's data directory (its fleet CA is created there if missing)
        #[arg(long, default_value = "ferry-data")]
        data: PathBuf,
        /// Where to write the PEM files
        #[arg(long)]
        out: PathBuf,
        /// Host names and IP addresses the broker is reached at
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
        /// Client certificate common names (MQTT user names under use_identity_as_username)
        #[arg(long = "client", default_values = ["ferry-control"])]
        clients: Vec<String>,
    },
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if private {
            o.mode(0o600);
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = o
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

pub fn run(cmd: BrokerCmd) -> anyhow::Result<()> {
    match cmd {
        BrokerCmd::Certs {
            data,
            out,
            hosts,
            clients,
        } => {
            for c in &clients {
                if !ferry_protocol::telemetry::is_topic_name(c) || c.starts_with("dev_") {
                    anyhow::bail!(
                        "client name {c:?} must be [A-Za-z0-9._-] and not start with dev_ (device ids do)"
                    );
                }
            }
            let ca = DeviceCa::load_or_create(&data.join("fleet"))?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            write(&out.join("ca.pem"), &ca.cert_pem(), false)?;
            let (cert, key) = ca.issue_server(&hosts)?;
            write(&out.join("server.pem"), &pem("CERTIFICATE", &cert), false)?;
            write(&out.join("server.key"), &pem("PRIVATE KEY", &key), true)?;
            for c in &clients {
                let (cert, key) = ca.issue_client(c)?;
                write(
                    &out.join(format!("{c}.pem")),
                    &pem("CERTIFICATE", &cert),
                    false,
                )?;
                write(
                    &out.join(format!("{c}.key")),
                    &pem("PRIVATE KEY", &key),
                    true,
                )?;
            }
            Ok(())
        }
    }
}
