//! The cgroup tree of the scope: walking it, and watching it for cgroups
//! that appear or go away. Paths here are relative to the scope ("/" is the
//! scope itself); a cgroup's id is its directory's inode number on cgroup2.

pub mod sockets;
pub mod watch;

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// One cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub id: u64,
    /// Relative to the scope: "/" or "/a/b".
    pub path: String,
}

/// Deepest directory level walked below the scope; deeper cgroups are
/// reported and left to the kernel's unclassified handling.
pub const MAX_WALK_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "the scope cgroup {path} does not exist; create it (mkdir) or set `scope` in the config \
         to an existing cgroup under the cgroup2 mount"
    )]
    ScopeMissing { path: PathBuf },
    #[error("cannot read cgroup directory {path}")]
    Read { path: PathBuf, source: io::Error },
}

/// The id of the cgroup at `dir`.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// Every cgroup at and below `root` (the scope directory), parents first.
pub fn walk(root: &Path) -> Result<Vec<Cgroup>, WorkloadError> {
    if !root.is_dir() {
        return Err(WorkloadError::ScopeMissing { path: root.to_owned() });
    }
    let mut found = Vec::new();
    walk_below(root, "/", 0, &mut found)?;
    Ok(found)
}

/// Walks the cgroup at `root` + `rel` and everything below it.
pub fn walk_below(
    root: &Path,
    rel: &str,
    depth: usize,
    found: &mut Vec<Cgroup>,
) -> Result<(), WorkloadError> {
    let dir = join(root, rel);
    let id = match cgroup_id(&dir) {
        Ok(id) => id,
        // Removed while we walked: nothing to manage.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(WorkloadError::Read { path: dir, source }),
    };
    found.push(Cgroup { id, path: rel.to_owned() });
    if depth >= MAX_WALK_DEPTH {
        tracing::warn!(path = rel, "cgroup tree deeper than the walk limit");
        return Ok(());
    }
    for child in child_dirs(&dir)? {
        let child_rel = child_path(rel, &child);
        walk_below(root, &child_rel, depth + 1, found)?;
    }
    Ok(())
}

fn child_dirs(dir: &Path) -> Result<Vec<String>, WorkloadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(WorkloadError::Read { path: dir.to_owned(), source }),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// `parent` + "/" + `name`, for scope-relative paths.
pub fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

/// The directory of a scope-relative path.
pub fn join(root: &Path, rel: &str) -> PathBuf {
    let trimmed = rel.trim_start_matches('/');
    if trimmed.is_empty() { root.to_owned() } else { root.join(trimmed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_paths_join_with_one_slash() {
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
    }

    #[test]
    fn walks_a_directory_tree_parents_first() {
        let root = std::env::temp_dir().join(format!("gw-walk-{}", std::process::id()));
        std::fs::create_dir_all(root.join("b/c")).expect("create tree");
        std::fs::create_dir_all(root.join("a")).expect("create tree");
        std::fs::write(root.join("a/file"), b"x").expect("create file");
        let found = walk(&root).map(|v| v.into_iter().map(|c| c.path).collect::<Vec<_>>());
        std::fs::remove_dir_all(&root).expect("clean up");
        assert_eq!(found.expect("walk"), ["/", "/a", "/b", "/b/c"]);
    }
}
