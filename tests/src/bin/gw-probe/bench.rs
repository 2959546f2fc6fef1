//! The measurement loops of `cargo xtask bench`. They run here, inside the
//! workload's cgroup (and network namespace), because xtask never moves
//! itself; each loop is bounded by a count and a time limit, and prints raw
//! measurements (nanoseconds) for xtask to summarise.
//!
//! gw-probe bench serve-tcp ADDR                  accept and close, forever
//! gw-probe bench sink-udp ADDR                   read and discard, forever
//! gw-probe bench mix tcp|udp COUNT MAX_MS SPEC...
//!     the same calls for several workloads in one process, interleaved call
//!     by call; SPEC is PROCS,NETNS,ADDR (NETNS a namespace file or `-` for
//!     the starting one). Every socket is made while the process is in that
//!     workload's cgroup and namespace, so it speaks for that workload.
//!     Prints `connect<i> ns...` (or `sendto<i>`), and `socket<i> ns...`
//! gw-probe bench watch ADDR WANT TIMEOUT_MS      connect until the outcome is
//!                                                WANT; print CLOCK_MONOTONIC ns
//! gw-probe bench new-workload DIR HOLD ADDR TIMEOUT_MS
//!     mkdir DIR, move in, connect until allowed, move to HOLD, rmdir DIR;
//!     print ns from mkdir to the first allowed connect, and the attempts
//! gw-probe bench flood RATE SECS PORT_LO PORT_HI PROCS...
//!     one UDP socket per cgroup (made while in it), then sendto 127.0.0.1
//!     over every (port, socket) pair at RATE per second (0: flat out)

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use super::{Result, outcome_word, parse};

/// Upper bounds on any loop, whatever the caller asks for.
const MAX_COUNT: u64 = 10_000_000;
const MAX_TIME: Duration = Duration::from_secs(120);

pub fn run(words: &[&str]) -> Result<bool> {
    match words {
        ["serve-tcp", addr] => serve_tcp(addr),
        ["sink-udp", addr] => sink_udp(addr),
        ["mix", proto, count, ms, specs @ ..] => {
            super::mix::run(proto, limits(num(count)?, num(ms)?), specs)
        }
        ["watch", addr, want, ms] => watch(addr, want, num(ms)?),
        ["new-workload", dir, hold, addr, ms] => new_workload(dir, hold, addr, num(ms)?),
        ["flood", rate, secs, lo, hi, procs @ ..] => {
            let ports = (num(lo)? as u16)..=(num(hi)? as u16);
            flood(num(rate)?, num(secs)?, ports, procs)
        }
        _ => Err("usage: see the module documentation of gw-probe's bench module".into()),
    }
}

fn num(text: &str) -> Result<u64> {
    text.parse().map_err(|_| format!("not a number: {text}"))
}

pub(super) fn limits(count: u64, ms: u64) -> (u64, Duration) {
    (count.min(MAX_COUNT), Duration::from_millis(ms).min(MAX_TIME))
}

fn serve_tcp(addr: &str) -> Result<bool> {
    let listener = TcpListener::bind(parse(addr)?).map_err(|e| e.to_string())?;
    println!("listening {}", listener.local_addr().map_err(|e| e.to_string())?);
    // Accept and drop at once: the client measures connect()+close() only.
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(true)
}

fn sink_udp(addr: &str) -> Result<bool> {
    let socket = UdpSocket::bind(parse(addr)?).map_err(|e| e.to_string())?;
    println!("listening {}", socket.local_addr().map_err(|e| e.to_string())?);
    let mut buf = [0u8; 2048];
    loop {
        let _ = socket.recv_from(&mut buf);
    }
}

/// CLOCK_MONOTONIC in nanoseconds, comparable across processes.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn attempt(target: &SocketAddr) -> String {
    outcome_word(&TcpStream::connect_timeout(target, Duration::from_secs(1)).map(drop))
}

fn watch(addr: &str, want: &str, ms: u64) -> Result<bool> {
    let target = parse(addr)?;
    let (_, limit) = limits(0, ms);
    println!("ready {}", attempt(&target));
    let start = Instant::now();
    while start.elapsed() < limit {
        if attempt(&target) == want {
            println!("{}", monotonic_ns());
            return Ok(true);
        }
        // Leave the other core to the agent; 100 us bounds the error.
        std::thread::sleep(Duration::from_micros(100));
    }
    println!("timeout");
    Ok(false)
}

fn new_workload(dir: &str, hold: &str, addr: &str, ms: u64) -> Result<bool> {
    let target = parse(addr)?;
    let (_, limit) = limits(0, ms);
    let start = Instant::now();
    std::fs::create_dir(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    let procs = format!("{dir}/cgroup.procs");
    let outcome = enter(&procs).map(|()| until_allowed(&target, start, limit));
    // Always leave and remove the cgroup, whatever happened inside.
    let left = enter(hold);
    let removed = std::fs::remove_dir(dir).map_err(|e| format!("rmdir {dir}: {e}"));
    let (elapsed, attempts) = outcome?;
    left?;
    removed?;
    match elapsed {
        Some(ns) => println!("{ns} {attempts}"),
        None => println!("timeout {attempts}"),
    }
    Ok(elapsed.is_some())
}

fn enter(procs: &str) -> Result<()> {
    std::fs::write(procs, std::process::id().to_string())
        .map_err(|e| format!("cannot move into {procs}: {e}"))
}

fn until_allowed(target: &SocketAddr, start: Instant, limit: Duration) -> (Option<u64>, u64) {
    let mut attempts = 0;
    while start.elapsed() < limit {
        attempts += 1;
        if TcpStream::connect_timeout(target, Duration::from_secs(1)).is_ok() {
            return (Some(start.elapsed().as_nanos() as u64), attempts);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    (None, attempts)
}

#[derive(Default)]
struct FloodCount {
    attempts: u64,
    denied: u64,
    sent: u64,
    other: u64,
}

fn flood(
    rate: u64,
    secs: u64,
    ports: std::ops::RangeInclusive<u16>,
    procs: &[&str],
) -> Result<bool> {
    let mut sockets = Vec::new();
    for file in procs {
        // The socket speaks for the cgroup it was made in, not the current one.
        enter(file)?;
        sockets.push(UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?);
    }
    let (_, limit) = limits(0, secs.saturating_mul(1000));
    let mut count = FloodCount::default();
    let start = Instant::now();
    'outer: loop {
        for port in ports.clone() {
            let target = SocketAddr::from(([127, 0, 0, 1], port));
            for socket in &sockets {
                if !pace(rate, start, limit, count.attempts) {
                    break 'outer;
                }
                tally(&mut count, socket.send_to(b"flood", target));
            }
        }
    }
    let elapsed = start.elapsed().as_nanos();
    println!("{} {} {} {} {elapsed}", count.attempts, count.denied, count.sent, count.other);
    Ok(true)
}

fn tally(count: &mut FloodCount, result: std::io::Result<usize>) {
    count.attempts += 1;
    match result {
        Ok(_) => count.sent += 1,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => count.denied += 1,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => count.sent += 1,
        Err(_) => count.other += 1,
    }
}

/// Waits until the next send is due; false once the time is up.
fn pace(rate: u64, start: Instant, limit: Duration, done: u64) -> bool {
    loop {
        let elapsed = start.elapsed();
        if elapsed >= limit || done >= MAX_COUNT * 10 {
            return false;
        }
        if rate == 0 {
            return true;
        }
        let due = done.saturating_mul(1_000_000_000) / rate;
        let now = elapsed.as_nanos() as u64;
        if now >= due {
            return true;
        }
        if due - now > 200_000 {
            std::thread::sleep(Duration::from_nanos(due - now - 100_000));
        } else {
            std::hint::spin_loop();
        }
    }
}
