//! Where the cgroup2 filesystem is mounted, for the demo and the bench
//! (hosts differ: /sys/fs/cgroup, or /sys/fs/cgroup/unified in hybrid mode).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The cgroup2 mount point, from mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            after.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        })
        .context("no cgroup2 filesystem is mounted")
}
