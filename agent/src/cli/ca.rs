//! `gridward ca`: the built-in CA for a single host, and a way to issue
//! SVIDs into the file layout that `identity: {source: files}` reads, for
//! an operator (or a test) acting as the external PKI of several hosts.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Subcommand;

use super::CliResult;
use crate::{
    identity::{
        ca::{BuiltinCa, InitMode},
        source::{BUNDLE_FILE, SVID_FILE, SVID_KEY_FILE},
    },
    spiffe::{SpiffeId, TrustDomain},
};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA: writes DIR/bundle.pem and DIR/ca-key.pem (mode 0600).
    /// Refuses to replace an existing key.
    Init {
        /// Where the CA lives.
        #[arg(long)]
        dir: PathBuf,
        /// The trust domain it signs for, e.g. grid.local.
        #[arg(long)]
        trust_domain: String,
    },
    /// Issue an X.509-SVID into OUT/<trust domain><path>/svid.pem and
    /// svid_key.pem, and copy the bundle to OUT/bundle.pem: the layout of
    /// `identity: {source: files, dir: OUT}`.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        trust_domain: String,
        /// The SPIFFE ID to issue for.
        #[arg(long)]
        id: String,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime in seconds (default one hour).
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
        /// Start of validity as Unix seconds (default: now); for testing
        /// certificates that are expired or not yet valid.
        #[arg(long)]
        not_before: Option<u64>,
    },
}

pub fn run(command: CaCommand) -> CliResult {
    match command {
        CaCommand::Init { dir, trust_domain } => {
            let domain = TrustDomain::parse(&trust_domain)?;
            BuiltinCa::init(&dir, domain, InitMode::CreateNew)?;
            println!("CA for {trust_domain} written to {}", dir.display());
        }
        CaCommand::Issue { dir, trust_domain, id, out, lifetime, not_before } => {
            let domain = TrustDomain::parse(&trust_domain)?;
            let ca = BuiltinCa::load(&dir, domain)?;
            let id = SpiffeId::parse(&id)?;
            let start =
                not_before.map_or_else(SystemTime::now, |s| UNIX_EPOCH + Duration::from_secs(s));
            let svid = ca.issue_window(&id, start, start + Duration::from_secs(lifetime))?;
            let target = write_svid(&out, &id, &svid.chain_pem(), &svid.key_pem())?;
            std::fs::copy(dir.join(BUNDLE_FILE), out.join(BUNDLE_FILE))?;
            println!("issued {id} into {}", target.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_svid(out: &Path, id: &SpiffeId, chain: &str, key: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut dir = out.join(id.trust_domain());
    dir.extend(id.path().split('/').filter(|s| !s.is_empty()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(SVID_FILE), chain)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(SVID_KEY_FILE))?;
    std::io::Write::write_all(&mut file, key.as_bytes())?;
    Ok(dir)
}
