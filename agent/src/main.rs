//! gridward: identity-based enforcement between workloads, from the kernel.
//!
//! `run` is the agent; every other command is a client of a running agent or
//! works offline (policy check, teardown).

mod api;
mod cli;
mod config;
mod events;
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "a few helpers serve only tests and the sources still to come (SPIRE)"
    )
)]
mod identity;
mod kernel;
mod loader;
mod paths;
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "a few helpers serve only tests and the sources still to come (SPIRE)"
    )
)]
mod peering;
mod policy;
mod runtime;
mod spiffe;
mod workload_api;
mod workloads;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if !matches!(cli.command, cli::Command::Run { .. }) {
        // A client command piped into `head` should end quietly, as other
        // command line tools do, rather than panic on a closed stdout.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    cli::init_logging(&cli);
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("gridward: cannot start the async runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gridward: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// An error with its causes, "outer: inner: innermost".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
