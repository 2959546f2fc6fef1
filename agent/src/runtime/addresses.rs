//! Where a workload can be reached: the addresses of the network namespace
//! its processes run in, when that is a namespace of its own (a pod). A
//! workload in the agent's own namespace shares the host's addresses, which
//! cannot name it to another host, so it claims none.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// Addresses of the namespaces the cgroups' processes run in.
pub fn of_cgroups(dirs: &[PathBuf]) -> Vec<IpAddr> {
    let own = namespace_inode(Path::new("/proc/self/ns/net"));
    let mut found = Vec::new();
    for dir in dirs {
        let Some(pid) = first_pid(dir) else { continue };
        let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let inode = namespace_inode(&ns_path);
        if inode.is_none() || inode == own {
            continue;
        }
        for address in addresses_in(&ns_path) {
            if !found.contains(&address) {
                found.push(address);
            }
        }
    }
    found
}

fn namespace_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn first_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    text.lines().find_map(|line| line.trim().parse().ok())
}

/// The addresses of the agent's own network namespace.
pub fn own_namespace() -> Vec<IpAddr> {
    interface_addresses()
}

/// Enters the namespace on a thread of its own (setns changes only the
/// calling thread) and lists its addresses there.
fn addresses_in(ns_path: &Path) -> Vec<IpAddr> {
    let Ok(ns) = File::open(ns_path) else { return Vec::new() };
    let worker = std::thread::spawn(move || {
        // SAFETY: `ns` is an open namespace file; only this thread moves.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Vec::new();
        }
        interface_addresses()
    });
    worker.join().unwrap_or_default()
}

/// Non-loopback, non-link-local addresses of the calling thread's namespace.
fn interface_addresses() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is valid for writes; freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: getifaddrs returned a valid list; we only read entries.
        let entry = unsafe { &*cursor };
        if let Some(address) = entry_address(entry) {
            found.push(address);
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

fn entry_address(entry: &libc::ifaddrs) -> Option<IpAddr> {
    if entry.ifa_addr.is_null() || entry.ifa_flags & libc::IFF_LOOPBACK as u32 != 0 {
        return None;
    }
    // SAFETY: ifa_addr is non-null and points at a sockaddr of the family
    // it names.
    let address = unsafe {
        match i32::from((*entry.ifa_addr).sa_family) {
            libc::AF_INET => {
                let sin = &*entry.ifa_addr.cast::<libc::sockaddr_in>();
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                let sin6 = &*entry.ifa_addr.cast::<libc::sockaddr_in6>();
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => return None,
        }
    };
    let link_local = matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local());
    (!link_local).then_some(address)
}
