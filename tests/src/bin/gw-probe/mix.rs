//! `gw-probe bench mix`: one process measures several workloads call by
//! call, so that whatever the machine does meanwhile (other tenants,
//! frequency changes) falls on all of them alike.
//!
//! TCP: sockets are made in batches, each batch while the process sits in
//! the workload's cgroup and network namespace (a socket speaks for the
//! cgroup that made it, for its whole life); then connect()+close() is
//! timed on one socket of each workload in turn, the order rotating every
//! iteration. socket() is timed too, per workload. UDP: one socket per
//! workload, and sendto() on each in turn.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use super::{Result, parse, raw_connect};

/// TCP sockets made per workload before they are used.
const BATCH: usize = 64;

struct Spec {
    procs: String,
    netns: OwnedFd,
    target: SocketAddr,
}

pub fn run(proto: &str, (count, limit): (u64, Duration), specs: &[&str]) -> Result<bool> {
    let home = open_netns("/proc/self/ns/net")?;
    let specs = specs.iter().map(|s| parse_spec(s, &home)).collect::<Result<Vec<_>>>()?;
    if specs.is_empty() {
        return Err("mix needs at least one workload".into());
    }
    match proto {
        "tcp" => tcp(&specs, count, limit),
        "udp" => udp(&specs, count, limit),
        _ => Err(format!("unknown protocol {proto}")),
    }
}

fn parse_spec(text: &str, home: &OwnedFd) -> Result<Spec> {
    let [procs, netns, addr] = text.split(',').collect::<Vec<_>>()[..] else {
        return Err(format!("bad workload {text:?}: want PROCS,NETNS,ADDR"));
    };
    let netns = if netns == "-" {
        home.try_clone().map_err(|e| e.to_string())?
    } else {
        open_netns(netns)?
    };
    Ok(Spec { procs: procs.to_owned(), netns, target: parse(addr)? })
}

fn open_netns(path: &str) -> Result<OwnedFd> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    Ok(OwnedFd::from(file))
}

/// Moves this process into the workload's cgroup and network namespace.
fn enter(spec: &Spec) -> Result<()> {
    std::fs::write(&spec.procs, std::process::id().to_string())
        .map_err(|e| format!("cannot move into {}: {e}", spec.procs))?;
    // SAFETY: the descriptor is a namespace file we hold open; the process
    // is single-threaded, as setns(CLONE_NEWNET) prefers.
    if unsafe { libc::setns(spec.netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn tcp(specs: &[Spec], count: u64, limit: Duration) -> Result<bool> {
    let n = specs.len();
    let mut connect: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut socket: Vec<Vec<u64>> = vec![Vec::new(); n];
    let start = Instant::now();
    let mut done = 0u64;
    while done < count && start.elapsed() < limit {
        let mut batches = Vec::with_capacity(n);
        for (i, spec) in specs.iter().enumerate() {
            enter(spec)?;
            batches.push(make_sockets(spec, &mut socket[i])?);
        }
        for j in 0..BATCH {
            if done >= count || start.elapsed() >= limit {
                break;
            }
            for k in 0..n {
                let i = (j + k) % n;
                let fd = batches[i].pop().ok_or("batch ran out")?;
                connect[i].push(connect_close(fd, &specs[i].target)?);
            }
            done += 1;
        }
        // Sockets left over close on drop, untimed.
    }
    print_series("connect", &connect);
    print_series("socket", &socket);
    Ok(true)
}

fn make_sockets(spec: &Spec, times: &mut Vec<u64>) -> Result<Vec<OwnedFd>> {
    let domain = if spec.target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let mut fds = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let t = Instant::now();
        // SAFETY: plain syscall; the descriptor is checked and owned below.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        let elapsed = t.elapsed();
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        times.push(elapsed.as_nanos() as u64);
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(fds)
}

/// Times connect() and close() of one socket.
fn connect_close(fd: OwnedFd, target: &SocketAddr) -> Result<u64> {
    let t = Instant::now();
    let result = raw_connect(fd.as_raw_fd(), target);
    drop(fd);
    let elapsed = t.elapsed();
    result.map_err(|e| format!("connect to {target}: {}", super::outcome_word(&Err(e))))?;
    Ok(elapsed.as_nanos() as u64)
}

fn udp(specs: &[Spec], count: u64, limit: Duration) -> Result<bool> {
    let mut sockets = Vec::with_capacity(specs.len());
    for spec in specs {
        enter(spec)?;
        sockets.push(UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?);
    }
    let n = specs.len();
    let mut sendto: Vec<Vec<u64>> = vec![Vec::new(); n];
    let payload = [0u8; 32];
    let start = Instant::now();
    let mut j = 0usize;
    while (j as u64) < count && start.elapsed() < limit {
        for k in 0..n {
            let i = (j + k) % n;
            let t = Instant::now();
            let sent = sockets[i].send_to(&payload, specs[i].target);
            let elapsed = t.elapsed();
            sent.map_err(|e| format!("sendto {}: {e}", specs[i].target))?;
            sendto[i].push(elapsed.as_nanos() as u64);
        }
        j += 1;
    }
    print_series("sendto", &sendto);
    Ok(true)
}

fn print_series(name: &str, series: &[Vec<u64>]) {
    for (i, samples) in series.iter().enumerate() {
        let text: Vec<String> = samples.iter().map(u64::to_string).collect();
        println!("{name}{i} {}", text.join(" "));
    }
}
