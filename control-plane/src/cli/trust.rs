use crate::keyfile;
use anyhow::Context;
use clap::Subcommand;
use ferry_protocol::trust::{Publisher, SignedTrustRoot, TrustRoot};
use ferry_protocol::KeyId;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum TrustCmd {
    /// Create a trust root signed by a threshold of root keys
    Init {
        /// A root private key that signs this root (repeat for k-of-n)
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        /// Extra root public keys that do not sign now but count toward n
        #[arg(long = "root-pub")]
        root_pubs: Vec<PathBuf>,
        /// Root signatures needed on this root and on its successor
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// PUBLISHER.pub[=PATTERN[,PATTERN…]]: a key allowed to sign models
        /// whose names match the glob patterns (default `*`)
        #[arg(long = "publisher")]
        publishers: Vec<String>,
        /// Distinct publisher signatures a bundle needs
        #[arg(long, default_value_t = 1)]
        publisher_threshold: u32,
        /// Revoke a key by id (hex)
        #[arg(long = "revoke")]
        revoked: Vec<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// How long the root stays valid
        #[arg(long, default_value = "365d", value_parser = super::parse_duration)]
        expires: std::time::Duration,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a trust root as JSON after checking its own signatures
    Show { file: PathBuf },
}

pub fn run(cmd: TrustCmd) -> anyhow::Result<()> {
    match cmd {
        TrustCmd::Init {
            root_keys,
            root_pubs,
            threshold,
            publishers,
            publisher_threshold,
            revoked,
            tenant,
            version,
            expires,
            out,
        } => {
            let signers = root_keys
                .iter()
                .map(|p| keyfile::read_signing_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            let mut keys: Vec<_> = signers
                .iter()
                .map(ferry_protocol::PublicKey::from_signing_key)
                .collect();
            for p in &root_pubs {
                keys.push(keyfile::read_public_key(p)?);
            }
            let publishers = publishers
                .iter()
                .map(|s| parse_publisher(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let revoked = revoked
                .iter()
                .map(|s| {
                    KeyId::from_hex(s)
                        .with_context(|| format!("--revoke {s:?}: expected a 16-hex-digit key id"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let root = TrustRoot {
                tenant,
                version,
                expires_at: crate::now_unix() + expires.as_secs(),
                threshold,
                root_keys: keys,
                publishers,
                publisher_threshold,
                revoked,
            };
            root.validate()?;
            let refs: Vec<_> = signers.iter().collect();
            let signed = SignedTrustRoot::sign(&root, &refs);
            // Refuse to write a root that would not open.
            signed
                .open(crate::now_unix())
                .context("the new trust root does not verify (is --threshold above the number of --root-key signers?)")?;
            keyfile::write_atomic(&out, &signed.to_bytes())?;
            println!(
                "trust root v{} for tenant {:?}: {} root keys (threshold {}), {} publishers -> {}",
                root.version,
                root.tenant,
                root.root_keys.len(),
                root.threshold,
                root.publishers.len(),
                out.display()
            );
            // Devices pin this at enrollment (`ferry-agent enroll
            // --root-fingerprint`, or `--trust` with the file itself).
            println!(
                "fingerprint {}",
                ferry_protocol::trust::fingerprint(&signed).to_hex()
            );
            Ok(())
        }
        TrustCmd::Show { file } => {
            let root = keyfile::read_trust_root(&file, crate::now_unix())?;
            println!("{}", serde_json::to_string_pretty(&root)?);
            Ok(())
        }
    }
}

fn parse_publisher(spec: &str) -> anyhow::Result<Publisher> {
    let (path, scopes) = match spec.split_once('=') {
        Some((p, s)) => (p, s.split(',').map(|x| x.trim().to_string()).collect()),
        None => (spec, vec!["*".to_string()]),
    };
    let path = Path::new(path);
    let key = keyfile::read_public_key(path)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| key.id().to_hex());
    Ok(Publisher { name, key, scopes })
}
