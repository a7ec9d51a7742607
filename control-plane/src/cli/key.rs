use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Generate an ed25519 key pair: DIR/NAME.key (mode 0600) and DIR/NAME.pub
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        name: String,
    },
}

pub fn run(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Generate { out, name } => {
            if !ferry_protocol::model::is_safe_name(&name) {
                anyhow::bail!("key name {name:?} must be a plain file name");
            }
            let (secret, public, pk) = crate::keyfile::generate(&out, &name)?;
            println!("key id {}", pk.id());
            println!("private {}", secret.display());
            println!("public  {}", public.display());
            Ok(())
        }
    }
}
