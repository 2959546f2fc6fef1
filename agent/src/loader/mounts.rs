//! Finding the cgroup v2 and bpffs mounts from `/proc/self/mountinfo`, and
//! mounting bpffs when it is absent. Hosts differ (cgroup2 sits at
//! `/sys/fs/cgroup` or, in hybrid mode, `/sys/fs/cgroup/unified`), so no
//! path is assumed.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// One line of mountinfo, reduced to what we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot read /proc/self/mountinfo")]
    Read { source: io::Error },
    #[error(
        "no cgroup v2 filesystem is mounted; gridward needs the unified hierarchy \
         (mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2,
    #[error("cannot mount bpffs at {path}; run as root with CAP_SYS_ADMIN")]
    MountBpffs { path: PathBuf, source: io::Error },
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let fs_type = after.split(' ').next()?;
    Some(Mount { mount_point: PathBuf::from(unescape(mount_point)), fs_type: fs_type.to_owned() })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(value)) => {
                out.push(value);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_mounts() -> Result<Vec<Mount>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| MountError::Read { source })?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup v2 mount point.
pub fn cgroup2_mount() -> Result<PathBuf, MountError> {
    read_mounts()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(MountError::NoCgroup2)
}

/// The bpffs mount point, mounting bpffs at `default` when none is mounted.
pub fn bpffs_mount(default: &Path) -> Result<PathBuf, MountError> {
    if let Some(found) = read_mounts()?.into_iter().find(|m| m.fs_type == "bpf") {
        return Ok(found.mount_point);
    }
    mount_bpffs(default)?;
    tracing::info!(path = %default.display(), "mounted bpffs");
    Ok(default.to_owned())
}

fn mount_bpffs(path: &Path) -> Result<(), MountError> {
    let fail = |source| MountError::MountBpffs { path: path.to_owned(), source };
    std::fs::create_dir_all(path).map_err(fail)?;
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| fail(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let fs = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings for the call's
    // duration; a null data pointer is allowed.
    let rc = unsafe { libc::mount(fs.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 25 0:33 / /sys/fs/bpf rw shared:15 - bpf bpf rw,mode=700
41 30 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw
garbage line without separator";

    #[test]
    fn finds_cgroup2_and_bpffs() {
        let mounts = parse_mountinfo(SAMPLE);
        let find = |t: &str| mounts.iter().find(|m| m.fs_type == t).map(|m| m.mount_point.clone());
        assert_eq!(find("cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find("bpf"), Some(PathBuf::from("/sys/fs/bpf")));
        assert_eq!(find("tmpfs"), Some(PathBuf::from("/mnt/with space")));
        assert_eq!(mounts.len(), 4);
    }
}
