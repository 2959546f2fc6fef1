//! Hosts for cross-host tests: network namespaces on one bridge, each with
//! an address the test picks from 192.0.2.0/24 (TEST-NET-1, routed nowhere).
//! Every namespace is deleted on drop, which also removes its veth.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

/// A bridge in a namespace of its own, and the namespaces plugged into it.
pub struct Lan {
    lan: String,
    members: Vec<String>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).stdout(Stdio::null()).status();
    assert!(status.is_ok_and(|s| s.success()), "ip {} failed", args.join(" "));
}

impl Lan {
    pub fn new(tag: &str) -> Self {
        let lan = format!("{tag}-{}-lan", std::process::id());
        ip(&["netns", "add", &lan]);
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        Self { lan, members: Vec::new() }
    }

    /// Adds a namespace with `address` (in 192.0.2.0/24) and returns its name.
    pub fn host(&mut self, name: &str, address: &str) -> String {
        let ns = format!("{}-{name}", self.lan.trim_end_matches("-lan"));
        ip(&["netns", "add", &ns]);
        self.members.push(ns.clone());
        let port = format!("v{}", self.members.len());
        ip(&[
            "-n", &self.lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip(&["-n", &self.lan, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.members.iter().chain(std::iter::once(&self.lan)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Makes `command` enter the network namespace `ns` before it runs (after
/// any cgroup move set up earlier). `ip netns exec` is not used because it
/// remounts /sys, which hides the cgroup tree and bpffs.
pub fn enter_netns(command: &mut Command, ns: &str) {
    let path = CString::new(format!("/run/netns/{ns}")).unwrap_or_default();
    // SAFETY: the closure only calls open, setns and close, which are
    // async-signal-safe, on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            libc::close(fd);
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}
