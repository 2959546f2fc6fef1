//! Developer commands for gridward. `cargo xtask demo` and `cargo xtask test`
//! are the two a newcomer needs; each installs what is missing first.

mod bench;
mod demo;
mod demo_hosts;
mod mounts;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "gridward developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent): nightly rust-src,
    /// bpf-linker built against the nightly toolchain's LLVM, bpffs, and the
    /// Debian packages the tests use.
    Setup,
    /// Build the agent (with its embedded eBPF object) and the test probe.
    Build {
        /// Build with optimizations.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the demo: a small grid of services on this host, the
    /// agent enforcing a policy between them, and the live event stream.
    Demo {
        /// Keep the grid running after the scenario, until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Run every check: formatting, clippy, unit tests, and the integration
    /// tests against the real kernel (those need root).
    Test {
        /// Only the tests whose names contain this text.
        filter: Option<String>,
    },
    /// Run formatting and clippy checks only.
    Lint,
    /// Build in release and measure the real agent against the targets
    /// (root): prints a table and writes target/bench/results.json.
    Bench {
        /// Policy sizes (rules, and as many identity cgroups).
        #[arg(long, value_delimiter = ',', default_values_t = [10, 1_000, 10_000, 100_000])]
        sizes: Vec<usize>,
        /// Fewer rounds and iterations: a smoke test of the bench itself.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build { release } => build(release),
        Task::Demo { hold } => demo::run(hold),
        Task::Test { filter } => test(filter.as_deref()),
        Task::Lint => lint(),
        Task::Bench { sizes, quick } => bench::run(bench::Options { sizes, quick }),
    }
}

/// The workspace root (the parent of xtask/).
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or_else(|| manifest.to_owned(), Path::to_owned)
}

/// Runs a command in the workspace, failing with its description.
pub fn run_step(what: &str, command: &mut Command) -> Result<()> {
    eprintln!("==> {what}");
    if command.get_current_dir().is_none() {
        command.current_dir(root());
    }
    let status = command.status().with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut command = Command::new("cargo");
    // Never let an outer toolchain choice leak into the nested builds.
    command.env_remove("RUSTUP_TOOLCHAIN");
    command
}

fn build(release: bool) -> Result<()> {
    setup::run()?;
    let mut command = cargo();
    command.args(["build", "-p", "gridward", "-p", "gridward-tests", "--bins"]);
    if release {
        command.arg("--release");
    }
    run_step("build the agent and the test probe", &mut command)
}

fn lint() -> Result<()> {
    setup::run()?;
    run_step("check formatting", cargo().args(["fmt", "--all", "--check"]))?;
    run_step(
        "check formatting (eBPF programs)",
        cargo().args(["fmt", "--check", "--manifest-path", "ebpf/Cargo.toml"]),
    )?;
    run_step(
        "clippy (host crates)",
        cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    )?;
    run_step(
        "clippy (eBPF programs)",
        cargo().current_dir(root().join("ebpf")).args([
            "+nightly",
            "clippy",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
            "--",
            "-D",
            "warnings",
        ]),
    )
}

fn test(filter: Option<&str>) -> Result<()> {
    lint()?;
    build(false)?;
    let gridward = root().join("target/debug/gridward");
    let mut command = cargo();
    command
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("GRIDWARD_BIN", &gridward)
        // The kernel tests share one cgroup tree and bpffs; two at a time keeps
        // them fast on two cores without starving the agents they start.
        .env("RUST_TEST_THREADS", "2");
    if let Some(filter) = filter {
        command.arg(filter);
    }
    if !setup::is_root() {
        eprintln!("note: not root: the kernel tests will be skipped (run as root to include them)");
    }
    run_step("unit and integration tests", &mut command)
}
