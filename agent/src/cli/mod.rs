//! The command line: argument parsing and one function per command.

mod ca;
mod observe;
mod status;
mod workload;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{api, config, loader, paths};

type CliResult = Result<ExitCode, Box<dyn std::error::Error + Send + Sync>>;

/// gridward enforces identity-based policy between workloads on this host,
/// in the kernel: every connection is judged by the SPIFFE identities of both
/// ends, not by IP addresses.
///
/// Start with `gridward run` (observe mode, no policy) and watch who talks to
/// whom with `gridward observe`; then write a policy, check it with
/// `gridward policy check`, and enforce.
#[derive(Debug, Parser)]
#[command(name = "gridward", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load the kernel programs for the scope, classify
    /// cgroups, enforce the policy and stream events (root).
    ///
    /// Without --config an embedded default runs: observe mode for every
    /// cgroup, identities derived from cgroup paths. SIGHUP reloads the
    /// config file. Stopping the agent leaves enforcement in force from the
    /// pins; a new agent adopts it.
    Run {
        /// Config and policy file (YAML). See docs/config.md.
        #[arg(long, short, env = "GRIDWARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Stream verdicts live from a running agent.
    Observe(observe::ObserveArgs),
    /// Show what a running agent has loaded and its counters.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Check or reload a policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Fetch this process's X.509-SVID from the agent's SPIFFE Workload API,
    /// as a workload would, and print its SPIFFE ID.
    #[command(name = "workload-fetch")]
    WorkloadFetch {
        /// The Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// The built-in CA, and issuing SVIDs to files.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Detach the programs of a scope and remove its pins (root). Run it
    /// after stopping the agent to stop enforcement.
    Teardown {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a config and policy file without root and without changing
    /// anything; prints each problem with its line and a fix.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Ask a running agent to reload its config file; an invalid one
    /// changes nothing.
    Reload {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Which agent a client command talks to.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The agent's config file (its scope and API socket are read from it).
    #[arg(long, short, env = "GRIDWARD_CONFIG", conflicts_with_all = ["scope", "socket"])]
    pub config: Option<PathBuf>,
    /// The agent's scope, as in its config (default "/").
    #[arg(long)]
    pub scope: Option<String>,
    /// The agent's API socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

impl Target {
    fn scope(&self) -> Result<String, config::ConfigError> {
        match (&self.config, &self.scope) {
            (Some(path), _) => Ok(config::agent_location(path)?.0),
            (None, Some(scope)) => Ok(scope.clone()),
            (None, None) => Ok("/".to_owned()),
        }
    }

    /// Only the scope and socket are read from a config file: a client must
    /// reach its agent even while the rest of the file holds a mistake.
    fn socket(&self) -> Result<PathBuf, config::ConfigError> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if let Some(path) = &self.config {
            let (scope, socket) = config::agent_location(path)?;
            return Ok(socket.unwrap_or_else(|| paths::api_socket_for_scope(&scope)));
        }
        Ok(paths::api_socket_for_scope(&self.scope()?))
    }
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRIDWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Run { config } => run(config).await,
        Command::Observe(args) => observe::observe(args).await,
        Command::Status { target, output } => status::status(&target.socket()?, output).await,
        Command::Policy(PolicyCommand::Check { file }) => check(&file),
        Command::Policy(PolicyCommand::Reload { target }) => reload(&target.socket()?).await,
        Command::Teardown { target } => teardown(&target.scope()?),
        Command::Ca(command) => ca::run(command),
        Command::WorkloadFetch { socket } => workload::fetch(socket).await,
    }
}

async fn run(path: Option<PathBuf>) -> CliResult {
    let config = match &path {
        Some(path) => config::load(path)?,
        None => config::builtin()?,
    };
    crate::runtime::run(config, path).await?;
    Ok(ExitCode::SUCCESS)
}

fn check(file: &Path) -> CliResult {
    match config::load(file) {
        Ok(config) => {
            println!(
                "{}: ok: trust domain {}, mode {}, scope {}, {} workload selector(s), {} rule(s)",
                file.display(),
                config.trust_domain,
                config.mode,
                config.scope,
                config.workloads.len(),
                config.rules.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{}", crate::error_chain(&error));
            Ok(ExitCode::from(2))
        }
    }
}

async fn reload(socket: &Path) -> CliResult {
    let reply: api::ReloadReply = api::client::call(socket, &api::Request::Reload).await?;
    if reply.ok {
        println!("policy reloaded: revision {}", reply.revision.unwrap_or_default());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("reload refused, the previous policy stays: {}", reply.error.unwrap_or_default());
        Ok(ExitCode::from(2))
    }
}

fn teardown(scope: &str) -> CliResult {
    let bpffs = loader::mounts::bpffs_mount(Path::new(paths::DEFAULT_BPFFS))?;
    let paths = paths::ScopePaths::new(&bpffs, scope);
    if crate::runtime::scope_is_locked(&paths) {
        eprintln!(
            "an agent is running for scope {scope}; stop it first (teardown would leave it \
             running without enforcement)"
        );
        return Ok(ExitCode::from(2));
    }
    let _ = std::fs::remove_dir_all(&paths.runtime);
    if let Some(dir) = paths.workload_api_socket().parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if loader::teardown(&paths)? {
        println!("removed the programs and pins of scope {scope}");
    } else {
        println!("scope {scope} has no pins; nothing to remove");
    }
    Ok(ExitCode::SUCCESS)
}
