//! Whole-map reads and bulk writes through the raw bpf(2) batch commands
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`),
//! which aya 0.14 does not offer. One syscall carries thousands of entries,
//! so a policy install costs the kernel's per-entry work and not a syscall
//! per entry. A kernel or map type without batch support (EINVAL, ENOTSUPP)
//! gets the same result one entry per syscall.
//!
//! Keys and values are passed as packed byte arrays of the map's key and
//! value sizes; the caller lays them out (see `super`).

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

const BPF_MAP_LOOKUP_ELEM: u64 = 1;
const BPF_MAP_UPDATE_ELEM: u64 = 2;
const BPF_MAP_DELETE_ELEM: u64 = 3;
const BPF_MAP_GET_NEXT_KEY: u64 = 4;
const BPF_MAP_LOOKUP_BATCH: u64 = 24;
const BPF_MAP_UPDATE_BATCH: u64 = 26;
const BPF_MAP_DELETE_BATCH: u64 = 27;
/// The kernel's internal "not supported" errno, which can reach user space.
const ENOTSUPP: i32 = 524;
/// Entries per batch call: big enough to amortise the syscall, small enough
/// to keep the kernel's temporary buffers modest.
const CHUNK: usize = 8_192;

/// One map, by a descriptor of our own, with its key and value sizes.
pub struct RawMap {
    fd: OwnedFd,
    pub key_size: usize,
    pub value_size: usize,
}

/// `union bpf_attr`, zeroed beyond the fields a command uses.
#[repr(C, align(8))]
struct Attr([u8; 72]);

impl Attr {
    fn new() -> Self {
        Self([0; 72])
    }
    fn u32_at(&mut self, at: usize, value: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn ptr_at(&mut self, at: usize, ptr: *const u8) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&(ptr as u64).to_ne_bytes());
        self
    }
    fn read_u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
}

// Offsets in the batch part of bpf_attr: in_batch, out_batch, keys, values,
// count, map_fd, elem_flags, flags.
const IN_BATCH: usize = 0;
const OUT_BATCH: usize = 8;
const KEYS: usize = 16;
const VALUES: usize = 24;
const COUNT: usize = 32;
const MAP_FD: usize = 36;
// Offsets for the single-element commands: map_fd, key, value/next_key.
const ELEM_FD: usize = 0;
const ELEM_KEY: usize = 8;
const ELEM_VALUE: usize = 16;

fn bpf(cmd: u64, attr: &mut Attr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed; every pointer in
    // it points to a live buffer of the size the command reads or writes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | ENOTSUPP | libc::ENOSYS))
}

fn not_found(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOENT)
}

impl RawMap {
    pub fn new(fd: OwnedFd, key_size: usize, value_size: usize) -> Self {
        Self { fd, key_size, value_size }
    }

    fn fd(&self) -> u32 {
        self.fd.as_raw_fd() as u32
    }

    /// Writes every (key, value): `keys` holds `n` keys, `values` `n` values.
    pub fn update_all(&self, keys: &[u8], values: &[u8]) -> io::Result<()> {
        let n = keys.len() / self.key_size;
        let mut done = 0;
        while done < n {
            let count = (n - done).min(CHUNK);
            let k = &keys[done * self.key_size..];
            let v = &values[done * self.value_size..];
            match self.update_batch(k, v, count) {
                Ok(()) => done += count,
                Err(error) if unsupported(&error) => return self.update_each(k, v, n - done),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn update_batch(&self, keys: &[u8], values: &[u8], count: usize) -> io::Result<()> {
        let mut attr = Attr::new();
        attr.ptr_at(KEYS, keys.as_ptr()).ptr_at(VALUES, values.as_ptr());
        attr.u32_at(COUNT, count as u32).u32_at(MAP_FD, self.fd());
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
    }

    fn update_each(&self, keys: &[u8], values: &[u8], n: usize) -> io::Result<()> {
        for i in 0..n {
            let mut attr = Attr::new();
            attr.u32_at(ELEM_FD, self.fd());
            attr.ptr_at(ELEM_KEY, keys[i * self.key_size..].as_ptr());
            attr.ptr_at(ELEM_VALUE, values[i * self.value_size..].as_ptr());
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr)?;
        }
        Ok(())
    }

    /// Deletes every key in `keys`; keys that are already gone are fine.
    pub fn delete_all(&self, keys: &[u8]) -> io::Result<()> {
        let n = keys.len() / self.key_size;
        let mut done = 0;
        while done < n {
            let count = (n - done).min(CHUNK);
            let k = &keys[done * self.key_size..];
            let mut attr = Attr::new();
            attr.ptr_at(KEYS, k.as_ptr()).u32_at(COUNT, count as u32).u32_at(MAP_FD, self.fd());
            match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
                Ok(()) => done += count,
                // The batch stops at a missing key: skip it and go on.
                Err(error) if not_found(&error) => done += attr.read_u32(COUNT) as usize + 1,
                Err(error) if unsupported(&error) => return self.delete_each(k, n - done),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn delete_each(&self, keys: &[u8], n: usize) -> io::Result<()> {
        for i in 0..n {
            let mut attr = Attr::new();
            attr.u32_at(ELEM_FD, self.fd()).ptr_at(ELEM_KEY, keys[i * self.key_size..].as_ptr());
            match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
                Err(error) if !not_found(&error) => return Err(error),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every (key, value) in the map, as packed arrays.
    pub fn read_all(&self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        // The batch token is a bucket number for hash maps and a key for the
        // generic implementation (LPM trie): room for either.
        let mut token = vec![0u8; self.key_size.max(8)];
        let mut first = true;
        loop {
            let (k, v, count, more) = match self.lookup_batch(&mut token, first) {
                Ok(found) => found,
                Err(error) if unsupported(&error) && first => return self.read_each(),
                Err(error) => return Err(error),
            };
            keys.extend_from_slice(&k[..count * self.key_size]);
            values.extend_from_slice(&v[..count * self.value_size]);
            first = false;
            if !more {
                return Ok((keys, values));
            }
        }
    }

    /// One lookup batch: (keys, values, count, whether more may follow).
    fn lookup_batch(
        &self,
        token: &mut [u8],
        first: bool,
    ) -> io::Result<(Vec<u8>, Vec<u8>, usize, bool)> {
        let mut keys = vec![0u8; CHUNK * self.key_size];
        let mut values = vec![0u8; CHUNK * self.value_size];
        let mut out = token.to_vec();
        let mut attr = Attr::new();
        if !first {
            attr.ptr_at(IN_BATCH, token.as_ptr());
        }
        attr.ptr_at(OUT_BATCH, out.as_mut_ptr()).ptr_at(KEYS, keys.as_mut_ptr());
        attr.ptr_at(VALUES, values.as_mut_ptr());
        attr.u32_at(COUNT, CHUNK as u32).u32_at(MAP_FD, self.fd());
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let count = attr.read_u32(COUNT) as usize;
        token.copy_from_slice(&out);
        match result {
            Ok(()) => Ok((keys, values, count, true)),
            // ENOENT: the walk reached the end; `count` entries are the last.
            Err(error) if not_found(&error) => Ok((keys, values, count, false)),
            Err(error) => Err(error),
        }
    }

    fn read_each(&self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut key = vec![0u8; self.key_size];
        let mut value = vec![0u8; self.value_size];
        let mut next = vec![0u8; self.key_size];
        let mut first = true;
        loop {
            let mut attr = Attr::new();
            attr.u32_at(ELEM_FD, self.fd()).ptr_at(ELEM_VALUE, next.as_mut_ptr());
            if !first {
                attr.ptr_at(ELEM_KEY, key.as_ptr());
            }
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Err(error) if not_found(&error) => return Ok((keys, values)),
                other => other?,
            }
            key.copy_from_slice(&next);
            first = false;
            let mut attr = Attr::new();
            attr.u32_at(ELEM_FD, self.fd()).ptr_at(ELEM_KEY, key.as_ptr());
            attr.ptr_at(ELEM_VALUE, value.as_mut_ptr());
            match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
                // Deleted between the two calls: nothing to report.
                Err(error) if not_found(&error) => continue,
                other => other?,
            }
            keys.extend_from_slice(&key);
            values.extend_from_slice(&value);
        }
    }
}
