//! Everything the benchmark creates on the machine, each owned by a guard
//! that removes it on drop (also on failure or Ctrl-C unwinding): cgroup
//! trees, the network namespace with its nft table, agents, probe
//! processes, and a raised inotify limit.
//!
//! Probes start inside their cgroup (and namespace) from their first
//! instruction: the forked child moves itself before exec, so xtask itself
//! never changes cgroup or namespace.

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// nft resolves `socket cgroupv2` paths relative to /sys/fs/cgroup; the
/// prefix that turns a cgroup2-relative path into an nft path ("unified/"
/// on a hybrid mount, "" on a pure v2 mount).
pub fn nft_cgroup_prefix(mount: &Path) -> Result<String> {
    let rel = mount.strip_prefix("/sys/fs/cgroup").with_context(|| {
        format!(
            "cgroup2 is mounted at {}, outside /sys/fs/cgroup, where nft looks",
            mount.display()
        )
    })?;
    let rel = rel.to_string_lossy();
    Ok(if rel.is_empty() { String::new() } else { format!("{rel}/") })
}

/// A cgroup subtree the bench made, removed deepest first on drop.
pub struct CgroupTree {
    pub dir: PathBuf,
}

impl CgroupTree {
    pub fn create(mount: &Path, rel: &str) -> Result<Self> {
        let dir = mount.join(rel.trim_start_matches('/'));
        if dir.exists() {
            bail!("{} exists already: is another bench running? remove it first", dir.display());
        }
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    pub fn mkdir(&self, rel: &str) -> Result<PathBuf> {
        let path = self.path(rel);
        if !path.exists() {
            std::fs::create_dir(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(path)
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}

/// Removes a cgroup tree deepest first; the processes in it are all the
/// bench's own children, ended before this runs.
pub fn remove_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove cgroup {}", dir.display());
}

/// A network namespace with loopback up, deleted on drop (its nft ruleset
/// goes with it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        let path = Path::new("/run/netns").join(name);
        if path.exists() {
            bail!("network namespace {name} exists already: is another bench running?");
        }
        quiet("ip", &["netns", "add", name])?;
        let netns = Self { name: name.to_owned() };
        quiet("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Loads an nft ruleset file into this namespace; returns the wall time.
    /// nft enters only the network namespace (`ip netns exec` would remount
    /// /sys, hiding the cgroup paths the rules name).
    pub fn nft_load(&self, file: &Path) -> Result<Duration> {
        let netns = CString::new(self.path().into_os_string().into_encoded_bytes())?;
        let mut command = Command::new("nft");
        command.arg("-f").arg(file);
        // SAFETY: the closure only calls async-signal-safe functions (open,
        // setns, close) on memory prepared before the fork.
        unsafe { command.pre_exec(move || enter_netns(&netns)) };
        let start = Instant::now();
        let out = command.output().context("cannot run nft")?;
        let elapsed = start.elapsed();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let head: Vec<&str> = err.lines().take(6).collect();
            bail!("nft -f {} failed:\n{}", file.display(), head.join("\n"));
        }
        Ok(elapsed)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = quiet("ip", &["netns", "delete", &self.name]);
    }
}

/// Runs a command, failing with its stderr.
pub fn quiet(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{program} {} failed: {}", args.first().copied().unwrap_or(""), err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command that starts in the cgroup `dir` and, if given, the network
/// namespace at `netns`.
pub fn command_in(program: &Path, dir: &Path, netns: Option<&Path>) -> Result<Command> {
    let procs = CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes())?;
    let netns = netns.map(|p| CString::new(p.as_os_str().as_encoded_bytes())).transpose()?;
    let mut command = Command::new(program);
    // SAFETY: the closure only calls async-signal-safe functions (open,
    // write, setns, close) on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            write_pid(&procs)?;
            if let Some(netns) = &netns {
                enter_netns(netns)?;
            }
            Ok(())
        })
    };
    Ok(command)
}

fn write_pid(procs: &CString) -> std::io::Result<()> {
    // SAFETY: the path is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writing one byte from a static buffer to our descriptor.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    // SAFETY: `fd` is ours and not used after this.
    unsafe { libc::close(fd) };
    if written != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn enter_netns(path: &CString) -> std::io::Result<()> {
    // SAFETY: the path is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` refers to a network namespace file; only this child moves.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    // SAFETY: `fd` is ours and not used after this.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Long-running children (servers, agents), killed and reaped on drop.
#[derive(Default)]
pub struct Children {
    children: Vec<Child>,
}

impl Children {
    /// Starts a server and waits for its "listening" line.
    pub fn serve(&mut self, mut command: Command, what: &str) -> Result<()> {
        let mut child = command.stdout(Stdio::piped()).spawn().with_context(|| what.to_owned())?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        self.children.push(child);
        if !line.starts_with("listening") {
            bail!("{what} did not start (port in use?): {line:?}");
        }
        Ok(())
    }

    /// Ends every child (most recent first).
    pub fn stop_all(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Runs a probe to completion (bounded by its own limits) and returns its
/// stdout; fails with its stderr.
pub fn run_probe(mut command: Command, what: &str) -> Result<String> {
    let out = command.output().with_context(|| format!("cannot start the probe: {what}"))?;
    if !out.status.success() {
        bail!("probe failed ({what}): {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Raises fs.inotify.max_user_watches for the run when it is below `need`,
/// and restores the old value on drop.
pub struct InotifyLimit {
    old: Option<u64>,
}

const WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";

impl InotifyLimit {
    pub fn at_least(need: u64) -> Result<Self> {
        let old: u64 = std::fs::read_to_string(WATCHES)?.trim().parse()?;
        if old >= need {
            return Ok(Self { old: None });
        }
        std::fs::write(WATCHES, need.to_string()).context("cannot raise max_user_watches")?;
        eprintln!("note: raised fs.inotify.max_user_watches {old} -> {need} for the run");
        Ok(Self { old: Some(old) })
    }
}

impl Drop for InotifyLimit {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = std::fs::write(WATCHES, old.to_string());
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock the probes print.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
