//! Who is on the other end of a Unix socket, and which cgroup it is in.
//!
//! Every raw call the Workload API makes lives here: `SO_PEERPIDFD` (kernel
//! 6.5+) to hold the connecting process by a pidfd, which, unlike a pid,
//! can never come to mean another process; `/proc/self/fdinfo` to learn the
//! pidfd's current pid; `/proc/<pid>/cgroup` for its cgroup; and
//! `pidfd_send_signal` with signal 0 to prove afterwards that the process
//! the pidfd holds is still alive, so that the pid read in between was still
//! its own. Only where the kernel lacks `SO_PEERPIDFD` is the peer held by
//! the pid from `SO_PEERCRED`, which a pid reused after the caller exits can
//! fool.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// `SO_PEERPIDFD` from the kernel's generic socket options (the value on
/// x86, arm and most other architectures); the libc crate does not export
/// it everywhere yet.
const SO_PEERPIDFD: libc::c_int = 77;

/// How the agent holds a connected peer.
#[derive(Debug)]
pub enum Peer {
    /// A pidfd for the process that connected.
    Pidfd(OwnedFd),
    /// Only a pid (`SO_PEERCRED`), because the kernel has no `SO_PEERPIDFD`.
    Pid(u32),
    /// The peer could not be identified at all; every request is refused.
    Unknown { reason: String },
}

/// Why a peer could not be resolved to a live process and its cgroup.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the peer could not be identified when it connected: {reason}")]
    Unidentified { reason: String },
    #[error("the calling process has exited")]
    Exited,
    #[error("the calling process lives in a pid namespace this agent cannot see")]
    OtherPidNamespace,
    #[error("{call} failed")]
    Syscall { call: &'static str, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} has no {what}")]
    Malformed { path: PathBuf, what: &'static str },
}

/// A peer's process and the cgroup v2 path it was in, as /proc shows it to
/// the agent (relative to the agent's cgroup namespace root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPeer {
    pub pid: u32,
    pub cgroup: String,
}

/// What [`Peer::of_socket`] found out about the kernel, so the listener can
/// say once that it runs degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSource {
    Pidfd,
    PeerCredFallback,
    Failed,
}

impl Peer {
    /// Takes the peer credentials of a connected Unix socket.
    pub fn of_socket(socket: &impl AsRawFd) -> (Self, PeerSource) {
        let fd = socket.as_raw_fd();
        match peer_pidfd(fd) {
            Ok(pidfd) => (Self::Pidfd(pidfd), PeerSource::Pidfd),
            Err(error) if error.raw_os_error() == Some(libc::ENOPROTOOPT) => match peer_pid(fd) {
                Ok(pid) => (Self::Pid(pid), PeerSource::PeerCredFallback),
                Err(error) => (Self::unknown("SO_PEERCRED", &error), PeerSource::Failed),
            },
            Err(error) => (Self::unknown("SO_PEERPIDFD", &error), PeerSource::Failed),
        }
    }

    fn unknown(call: &str, error: &io::Error) -> Self {
        Self::Unknown { reason: format!("getsockopt {call}: {error}") }
    }

    /// The peer's pid and cgroup now. For a pidfd, the pid is re-read each
    /// time and the process is checked to be alive after its cgroup was
    /// read, so an answer always belongs to the process that connected.
    pub fn resolve(&self) -> Result<ResolvedPeer, PeerError> {
        match self {
            Self::Pidfd(pidfd) => {
                let pid = pidfd_pid(pidfd)?;
                let cgroup = read_cgroup(pid)?;
                ensure_alive(pidfd)?;
                Ok(ResolvedPeer { pid, cgroup })
            }
            Self::Pid(pid) => Ok(ResolvedPeer { pid: *pid, cgroup: read_cgroup(*pid)? }),
            Self::Unknown { reason } => Err(PeerError::Unidentified { reason: reason.clone() }),
        }
    }
}

/// `getsockopt(SO_PEERPIDFD)`: a pidfd for the process that connected.
fn peer_pidfd(fd: RawFd) -> io::Result<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed for the call; the kernel writes
    // at most `len` bytes into `pidfd`, which is a live c_int on our stack.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut pidfd).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if pidfd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the kernel just installed `pidfd` in our table for us, and
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// `getsockopt(SO_PEERCRED)`: the pid that connected, as a plain number.
fn peer_pid(fd: RawFd) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: as above; `cred` is a live ucred and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(cred.pid)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// The pid a pidfd refers to now, from its fdinfo "Pid:" line.
fn pidfd_pid(pidfd: &OwnedFd) -> Result<u32, PeerError> {
    let path = PathBuf::from(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()));
    let text = std::fs::read_to_string(&path)
        .map_err(|source| PeerError::Read { path: path.clone(), source })?;
    match parse_fdinfo_pid(&text) {
        Some(-1) => Err(PeerError::Exited),
        Some(pid) => {
            u32::try_from(pid).ok().filter(|pid| *pid > 0).ok_or(PeerError::OtherPidNamespace)
        }
        None => Err(PeerError::Malformed { path, what: "\"Pid:\" line" }),
    }
}

/// The "Pid:" field of a pidfd's fdinfo: the pid, -1 once the process has
/// exited, 0 when it is not in the reader's pid namespace.
pub fn parse_fdinfo_pid(text: &str) -> Option<i64> {
    text.lines().find_map(|line| line.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok())
}

/// The cgroup v2 path of a process, from /proc/<pid>/cgroup.
fn read_cgroup(pid: u32) -> Result<String, PeerError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(PeerError::Exited),
        Err(source) => return Err(PeerError::Read { path, source }),
    };
    parse_cgroup_v2(&text)
        .map(str::to_owned)
        .ok_or(PeerError::Malformed { path, what: "cgroup v2 (\"0::\") line" })
}

/// The path on the unified hierarchy's "0::<path>" line; hybrid hosts list
/// v1 hierarchies too, which are ignored.
pub fn parse_cgroup_v2(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::")).filter(|path| path.starts_with('/'))
}

/// Signal 0 through the pidfd: succeeds while the process it holds is alive
/// (a zombie counts, and its pid cannot be reused until it is reaped).
fn ensure_alive(pidfd: &OwnedFd) -> Result<(), PeerError> {
    // SAFETY: a plain syscall on an fd we own, with no signal info pointer
    // and no flags; it only reads its arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        Err(PeerError::Exited)
    } else {
        Err(PeerError::Syscall { call: "pidfd_send_signal", source: error })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn reads_the_pid_line_of_a_pidfd_fdinfo() {
        let fdinfo =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\n";
        assert_eq!(parse_fdinfo_pid(fdinfo), Some(4242));
        assert_eq!(parse_fdinfo_pid("Pid:\t-1\nNSpid:\t-1\n"), Some(-1));
        assert_eq!(parse_fdinfo_pid("pos:\t0\n"), None);
    }

    #[test]
    fn takes_the_unified_line_of_a_hybrid_cgroup_file() {
        let hybrid = "12:pids:/user.slice\n1:name=systemd:/user.slice\n0::/gw/a\n";
        assert_eq!(parse_cgroup_v2(hybrid), Some("/gw/a"));
        assert_eq!(parse_cgroup_v2("0::/\n"), Some("/"));
        assert_eq!(parse_cgroup_v2("3:cpu:/x\n"), None);
        assert_eq!(parse_cgroup_v2("0::\n"), None);
    }

    #[test]
    fn resolves_the_peer_of_a_socket_pair_to_this_process() {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let (peer, source) = Peer::of_socket(&ours);
        assert_ne!(source, PeerSource::Failed, "{peer:?}");
        let resolved = peer.resolve().expect("resolves");
        assert_eq!(resolved.pid, std::process::id());
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        assert_eq!(Some(resolved.cgroup.as_str()), parse_cgroup_v2(&own));
        drop(theirs);
        // The fallback reads the same process by pid.
        let by_pid = Peer::Pid(std::process::id()).resolve().expect("resolves by pid");
        assert_eq!(by_pid, resolved);
    }

    #[test]
    fn a_pidfd_of_an_exited_process_resolves_to_nothing() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: pidfd_open on a pid we spawned and have not reaped yet.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(raw >= 0, "pidfd_open: {}", io::Error::last_os_error());
        let raw = RawFd::try_from(raw).expect("fd fits");
        // SAFETY: pidfd_open returned a new fd that nothing else owns.
        let peer = Peer::Pidfd(unsafe { OwnedFd::from_raw_fd(raw) });
        child.wait().expect("reap the child");
        assert!(matches!(peer.resolve(), Err(PeerError::Exited)), "{:?}", peer.resolve());
    }
}
