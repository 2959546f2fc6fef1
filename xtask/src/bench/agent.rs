//! The real agent under test: started from the release build with a
//! generated config, asked for its status and counters over its API, and
//! ended by pid on drop. The scope's pins are removed by [`Pins`] at the end.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub struct Agent {
    child: Option<Child>,
    bin: PathBuf,
    pub socket: PathBuf,
    pub audit: PathBuf,
    log: PathBuf,
    /// (bytes, lines) of the audit log counted so far.
    audit_seen: std::cell::Cell<(u64, u64)>,
}

/// Where an agent keeps its files for one run.
pub struct AgentFiles {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub audit: PathBuf,
    pub log: PathBuf,
}

impl AgentFiles {
    pub fn new(work: &Path, name: &str) -> Self {
        Self {
            config: work.join(format!("{name}.yaml")),
            socket: work.join(format!("{name}.sock")),
            audit: work.join(format!("{name}-audit.jsonl")),
            log: work.join(format!("{name}.log")),
        }
    }

    /// The config header that points the agent at these files.
    pub fn header(&self, scope: &str) -> String {
        format!(
            "scope: {scope}\napi_socket: {}\naudit_log: {}\n",
            self.socket.display(),
            self.audit.display()
        )
    }
}

impl Agent {
    /// Starts `gridward run` and waits (bounded) until its API answers.
    pub fn start(bin: &Path, files: &AgentFiles, timeout: Duration) -> Result<Self> {
        let _ = std::fs::remove_file(&files.audit);
        let log = std::fs::File::create(&files.log)?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&files.config)
            .env("GRIDWARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the agent")?;
        let agent = Self {
            child: Some(child),
            bin: bin.to_owned(),
            socket: files.socket.clone(),
            audit: files.audit.clone(),
            log: files.log.clone(),
            audit_seen: std::cell::Cell::new((0, 0)),
        };
        agent.wait_ready(timeout)?;
        Ok(agent)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.status().is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        bail!("the agent did not become ready in {timeout:?}; its log ends:\n{}", tail.join("\n"))
    }

    pub fn pid(&self) -> Result<u32> {
        self.child.as_ref().map(Child::id).context("the agent is not running")
    }

    pub fn status(&self) -> Result<Value> {
        let out = Command::new(&self.bin)
            .args(["status", "--output", "json", "--socket"])
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Every kernel counter, by name.
    pub fn counters(&self) -> Result<Counters> {
        let status = self.status()?;
        let list = status["counters"].as_array().context("status has no counters")?;
        let pairs = list
            .iter()
            .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["value"].as_u64()?)))
            .collect();
        Ok(Counters(pairs))
    }

    /// Asks the agent to reload its config file; fails if it refuses.
    pub fn reload(&self) -> Result<()> {
        let out = Command::new(&self.bin)
            .args(["policy", "reload", "--socket"])
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("reload refused: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Stops or resumes the agent (a stalled reader for the loss test).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid()? as i32;
        // SAFETY: plain syscall on the pid of our own child, not yet reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("cannot signal the agent: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ends the agent with SIGTERM and waits (bounded), then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: plain syscall on the pid of our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Lines in the audit log: every event the agent drained and logged.
    /// Counted incrementally (the log is append-only and may be large).
    pub fn audit_lines(&self) -> Result<u64> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.audit) else { return Ok(0) };
        let (mut offset, mut lines) = self.audit_seen.get();
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                self.audit_seen.set((offset, lines));
                return Ok(lines);
            }
            offset += n as u64;
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // The audit log of a flood is large and of no use after the run.
        let _ = std::fs::remove_file(&self.audit);
    }
}

/// Kernel counters from one status call.
pub struct Counters(Vec<(String, u64)>);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        self.0.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }
}

/// Removes the scope's pins (programs and maps) on drop, after every agent
/// has stopped.
pub struct Pins {
    pub bin: PathBuf,
    pub scope: String,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["teardown", "--scope", &self.scope])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The process's CPU time (utime + stime) in clock ticks, and its RSS.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces, end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// Resident set size in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?)
}
