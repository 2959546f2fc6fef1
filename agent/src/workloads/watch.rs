//! Watching the scope's cgroup tree with inotify: cgroupfs reports mkdir and
//! rmdir like any filesystem, so a new cgroup is seen within milliseconds.
//! Every directory gets its own watch; a new directory is walked after its
//! watch is added, so children created in between are not missed.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use tokio::io::unix::AsyncFd;

use super::join;

/// What changed in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeChange {
    /// A directory appeared at this scope-relative path.
    Created(String),
    /// A directory at this path went away.
    Removed(String),
    /// The kernel dropped events; the caller must walk the tree again.
    Overflow,
}

/// An inotify instance watching every directory of one tree.
pub struct TreeWatcher {
    fd: AsyncFd<OwnedFd>,
    root: PathBuf,
    /// watch descriptor -> scope-relative path
    watches: HashMap<i32, String>,
}

const MASK: u32 = libc::IN_CREATE | libc::IN_DELETE | libc::IN_ONLYDIR | libc::IN_DELETE_SELF;
/// Size of `struct inotify_event` without the name.
const HEADER: usize = 16;

impl TreeWatcher {
    pub fn new(root: &Path) -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is checked below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd keeps its descriptor open and unchanged for as
        // long as the AsyncFd that owns it lives.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(io::Error::from)?;
        Ok(Self { fd, root: root.to_owned(), watches: HashMap::new() })
    }

    /// Watches the directory at `rel`. A directory that vanished already is
    /// not an error.
    pub fn watch(&mut self, rel: &str) -> io::Result<()> {
        let dir = join(&self.root, rel);
        let path = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the descriptor is ours and the path is NUL-terminated.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
        if wd < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::NotFound {
                return Ok(());
            }
            return Err(error);
        }
        self.watches.insert(wd, rel.to_owned());
        Ok(())
    }

    /// Waits for the next batch of changes.
    pub async fn next_changes(&mut self) -> io::Result<Vec<TreeChange>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| read_fd(fd.get_ref().as_raw_fd(), &mut buf));
            match result {
                Ok(Ok(len)) => return Ok(self.parse(&buf[..len])),
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
    }

    /// Parses a buffer of inotify records; a truncated record ends parsing.
    fn parse(&mut self, mut buf: &[u8]) -> Vec<TreeChange> {
        let mut changes = Vec::new();
        while buf.len() >= HEADER {
            let wd = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let mask = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let name_len = u32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
            let Some(name_bytes) = buf.get(HEADER..HEADER + name_len) else {
                break;
            };
            let name = name_bytes.split(|b| *b == 0).next().unwrap_or_default();
            if let Some(change) = self.change(wd, mask, name) {
                changes.push(change);
            }
            buf = &buf[HEADER + name_len..];
        }
        changes
    }

    fn change(&mut self, wd: i32, mask: u32, name: &[u8]) -> Option<TreeChange> {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            return Some(TreeChange::Overflow);
        }
        if mask & libc::IN_IGNORED != 0 {
            self.watches.remove(&wd);
            return None;
        }
        let parent = self.watches.get(&wd)?;
        let name = std::str::from_utf8(name).ok()?;
        if mask & libc::IN_ISDIR == 0 || name.is_empty() {
            return None;
        }
        let path = super::child_path(parent, name);
        if mask & libc::IN_CREATE != 0 {
            Some(TreeChange::Created(path))
        } else if mask & libc::IN_DELETE != 0 {
            Some(TreeChange::Removed(path))
        } else {
            None
        }
    }
}

fn read_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}
