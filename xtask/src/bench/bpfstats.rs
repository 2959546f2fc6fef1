//! Where the programs' time goes: the kernel's own per-program run time
//! (`BPF_ENABLE_STATS`), read from the agent's pinned links through the raw
//! bpf(2) syscall. Stats are on only while the returned guard lives (the
//! kernel turns them off when its descriptor closes), and only for a short
//! extra run that no other figure uses, since they add a clock read to
//! every program run on the machine.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result, bail};

const BPF_OBJ_GET: i64 = 7;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_ENABLE_STATS: i64 = 32;
const BPF_STATS_RUN_TIME: u64 = 0;
/// Offsets in `struct bpf_prog_info` (uapi, stable) and `bpf_link_info`.
const PROG_INFO_NAME: usize = 64;
const PROG_INFO_RUN_TIME_NS: usize = 192;
const PROG_INFO_RUN_CNT: usize = 200;
const LINK_INFO_PROG_ID: usize = 8;

/// `union bpf_attr`, large enough and zeroed beyond the fields set.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn put_u32(&mut self, at: usize, value: u32) {
        self.0[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, value: u64) {
        self.0[at..at + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf(cmd: i64, attr: &mut Attr) -> Result<i32> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if rc < 0 {
        bail!("bpf({cmd}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(rc as i32)
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Turns on run-time stats until dropped.
pub fn enable() -> Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_STATS_RUN_TIME as u32);
    Ok(owned(bpf(BPF_ENABLE_STATS, &mut attr)?))
}

fn info(fd: &OwnedFd, len: usize) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; len];
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, len as u32);
    attr.put_u64(8, buf.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(buf)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(bytes)
}

/// (run time ns, run count) of the program behind one pinned link.
fn link_prog_stats(path: &Path) -> Result<(String, u64, u64)> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = Attr::new();
    attr.put_u64(0, c_path.as_ptr() as u64);
    let link = owned(bpf(BPF_OBJ_GET, &mut attr)?);
    let link_info = info(&link, 64)?;
    let prog_id = u32::from_ne_bytes(link_info[LINK_INFO_PROG_ID..][..4].try_into()?);
    let mut attr = Attr::new();
    attr.put_u32(0, prog_id);
    let prog = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?);
    let buf = info(&prog, 256)?;
    let name = buf[PROG_INFO_NAME..PROG_INFO_NAME + 16].split(|b| *b == 0).next().unwrap_or(&[]);
    let name = String::from_utf8_lossy(name).into_owned();
    Ok((name, u64_at(&buf, PROG_INFO_RUN_TIME_NS), u64_at(&buf, PROG_INFO_RUN_CNT)))
}

/// Program name -> (run time ns, runs), summed over the scope's links.
pub type Snapshot = BTreeMap<String, (u64, u64)>;

pub fn snapshot(links_dir: &Path) -> Result<Snapshot> {
    let mut out = Snapshot::new();
    let entries = std::fs::read_dir(links_dir)
        .with_context(|| format!("cannot list {}", links_dir.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let (name, time, runs) = link_prog_stats(&entry.path())?;
        let slot = out.entry(name).or_default();
        slot.0 += time;
        slot.1 += runs;
    }
    Ok(out)
}

/// Program name -> (mean ns per run, runs).
pub type Costs = BTreeMap<String, (f64, u64)>;

/// Mean ns per run of each program between two snapshots (runs > 0 only).
pub fn per_run(before: &Snapshot, after: &Snapshot) -> Costs {
    after
        .iter()
        .filter_map(|(name, (time, runs))| {
            let (t0, r0) = before.get(name).copied().unwrap_or_default();
            let runs = runs.checked_sub(r0)?;
            (runs > 0).then(|| (name.clone(), (time.saturating_sub(t0) as f64 / runs as f64, runs)))
        })
        .collect()
}

/// "gw_connect4 312 ns, ..." for the programs that ran.
pub fn line(costs: &Costs) -> String {
    let parts: Vec<String> =
        costs.iter().map(|(name, (ns, runs))| format!("{name} {ns:.0} ns (x{runs})")).collect();
    parts.join(", ")
}
