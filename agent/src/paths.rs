//! Every path the agent owns: pins on bpffs, the runtime directory with the
//! API socket and lock, and the state directory with the audit log. Each is
//! derived from the scope, so agents with different scopes never share one.

use std::path::{Path, PathBuf};

/// Where bpffs is mounted when the agent has to mount it itself.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// The project's directory on bpffs, under which each scope has its own.
pub const PIN_ROOT_NAME: &str = "gridward";
const RUNTIME_ROOT: &str = "/run/gridward";
const STATE_ROOT: &str = "/var/lib/gridward";
/// The Workload API sockets: unlike the runtime directory, every workload
/// must be able to reach these.
const WORKLOAD_API_ROOT: &str = "/run/gridward-workload";

/// Directory modes: only root may reach the API socket or the audit log.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// The paths of one scope.
#[derive(Debug, Clone)]
pub struct ScopePaths {
    /// The scope's cgroup, relative to the cgroup2 mount ("/" or "/a/b").
    pub scope: String,
    /// The scope's pin directory on bpffs.
    pub pins: PathBuf,
    pub runtime: PathBuf,
    pub state: PathBuf,
}

impl ScopePaths {
    pub fn new(bpffs: &Path, scope: &str) -> Self {
        let key = scope_key(scope);
        Self {
            scope: scope.to_owned(),
            pins: bpffs.join(PIN_ROOT_NAME).join(&key),
            runtime: Path::new(RUNTIME_ROOT).join(&key),
            state: Path::new(STATE_ROOT).join(&key),
        }
    }

    pub fn map_pins(&self) -> PathBuf {
        self.pins.join("maps")
    }

    pub fn link_pins(&self) -> PathBuf {
        self.pins.join("links")
    }

    pub fn api_socket(&self) -> PathBuf {
        self.runtime.join("api.sock")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.runtime.join("agent.lock")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.jsonl")
    }

    /// The SPIFFE Workload API socket that the scope's workloads connect to
    /// (their `SPIFFE_ENDPOINT_SOCKET` is `unix://` and this path).
    pub fn workload_api_socket(&self) -> PathBuf {
        Path::new(WORKLOAD_API_ROOT).join(scope_key(&self.scope)).join("api.sock")
    }
}

/// The default API socket of a scope, for CLI commands that only know it.
pub fn api_socket_for_scope(scope: &str) -> PathBuf {
    Path::new(RUNTIME_ROOT).join(scope_key(scope)).join("api.sock")
}

/// A reversible, single-component name for a scope path: '%', '/' and '.'
/// (bpffs refuses names with a dot) are percent-encoded, so "/gw-test/a"
/// becomes "%2Fgw-test%2Fa".
pub fn scope_key(scope: &str) -> String {
    let mut key = String::with_capacity(scope.len() + 8);
    for c in scope.chars() {
        match c {
            '%' => key.push_str("%25"),
            '/' => key.push_str("%2F"),
            '.' => key.push_str("%2E"),
            other => key.push(other),
        }
    }
    key
}

/// The scope path a key stands for, or `None` for a name we did not make.
pub fn scope_from_key(key: &str) -> Option<String> {
    let mut scope = String::with_capacity(key.len());
    let mut rest = key;
    while let Some(pos) = rest.find('%') {
        scope.push_str(&rest[..pos]);
        let code = rest.get(pos..pos + 3)?;
        match code {
            "%25" => scope.push('%'),
            "%2F" => scope.push('/'),
            "%2E" => scope.push('.'),
            _ => return None,
        }
        rest = &rest[pos + 3..];
    }
    scope.push_str(rest);
    scope.starts_with('/').then_some(scope)
}

/// Whether one scope contains the other (or they are the same).
pub fn scopes_overlap(a: &str, b: &str) -> bool {
    is_within(a, b) || is_within(b, a)
}

/// Whether `inner` is `outer` or lies below it.
pub fn is_within(inner: &str, outer: &str) -> bool {
    if outer == "/" || inner == outer {
        return true;
    }
    inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_round_trip() {
        for scope in ["/", "/gw-test/a", "/odd%name/x", "/kubepods.slice"] {
            let key = scope_key(scope);
            assert!(!key.contains('/') && !key.contains('.'), "{key}");
            assert_eq!(scope_from_key(&key).as_deref(), Some(scope));
        }
        assert_eq!(scope_from_key("%2Fa%zz"), None);
        assert_eq!(scope_from_key("plain"), None);
    }

    #[test]
    fn each_scope_has_its_own_workload_api_socket() {
        let paths = ScopePaths::new(Path::new(DEFAULT_BPFFS), "/gw/a");
        let socket = paths.workload_api_socket();
        assert_eq!(socket, Path::new("/run/gridward-workload/%2Fgw%2Fa/api.sock"));
        assert!(!socket.starts_with(&paths.runtime), "outside the root-only runtime directory");
    }

    #[test]
    fn overlap_is_by_path_component() {
        assert!(scopes_overlap("/", "/a"));
        assert!(scopes_overlap("/a", "/a/b"));
        assert!(scopes_overlap("/a/b", "/a"));
        assert!(!scopes_overlap("/a", "/ab"));
        assert!(!scopes_overlap("/a/b", "/a/c"));
    }
}
