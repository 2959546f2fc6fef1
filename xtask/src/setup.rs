//! Idempotent installation of what building and testing need. Each step
//! checks first and says what it does; nothing is downloaded that is there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run_step;

/// Debian packages the build, tests and demo use, each with what shows it is
/// there: a tool on PATH, or an absolute path to a file. `ip` for network
/// namespaces, `nft` for the benchmark's comparison, `protoc` and the
/// protobuf well-known types (`struct.proto`, which `protobuf-compiler` only
/// recommends) for the agent's Workload API code, generated at build time.
const PACKAGES: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("protoc", "protobuf-compiler"),
    ("/usr/include/google/protobuf/struct.proto", "libprotobuf-dev"),
];

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    if is_root() {
        bpffs()?;
        debian_packages()?;
    } else {
        eprintln!(
            "note: not root: skipping bpffs and Debian packages (the kernel tests need root)"
        );
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_rust_src() -> Result<()> {
    let installed =
        output("rustup", &["component", "list", "--installed", "--toolchain", "nightly"]).context(
            "the nightly toolchain is needed for the eBPF programs (rustup toolchain list)",
        )?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    run_step(
        "install the nightly rust-src component (eBPF builds core from source)",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

/// A directory whose lib/ holds the names bpf-linker's build looks for,
/// linked to the nightly toolchain's own LLVM; it must outlive the build
/// because the installed binary's rpath points into it.
fn llvm_prefix() -> Result<PathBuf> {
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".local/share/gridward/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(prefix)
}

fn bpf_linker() -> Result<()> {
    if output("bpf-linker", &["--version"]).is_ok() {
        return Ok(());
    }
    let prefix = llvm_prefix()?;
    let major = llvm_major()?;
    run_step(
        "build bpf-linker against the nightly toolchain's LLVM (a few minutes, once)",
        Command::new("cargo").env_remove("RUSTUP_TOOLCHAIN").env("LLVM_PREFIX", &prefix).args([
            "install",
            "bpf-linker",
            "--version",
            "^0.13",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]),
    )
}

fn llvm_major() -> Result<String> {
    let version = output("rustc", &["+nightly", "--version", "--verbose"])?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .context("cannot tell the nightly toolchain's LLVM version")
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    if mounts.lines().any(|line| line.split(" - ").nth(1).is_some_and(|t| t.starts_with("bpf "))) {
        return Ok(());
    }
    run_step(
        "mount bpffs at /sys/fs/bpf",
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
    )
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(needed, _)| !is_present(needed))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // CI has no terminal: apt must never stop to ask.
    let apt = || {
        let mut command = Command::new("apt-get");
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run_step("update the Debian package lists", apt().arg("update").arg("-q"))?;
    run_step(
        &format!("install Debian packages: {}", missing.join(" ")),
        apt().args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing),
    )
}

/// Whether a tool (a bare name, looked up on PATH) or a file (an absolute
/// path) is there.
fn is_present(needed: &str) -> bool {
    if needed.starts_with('/') { Path::new(needed).is_file() } else { which(needed).is_some() }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file())
}
