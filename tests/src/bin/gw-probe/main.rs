//! A tiny workload for the tests and the demo: it serves, connects and sends
//! on request and prints one line per result, so that callers see the real
//! kernel verdict (for example `denied` for EPERM) and nothing made up.
//!
//! gw-probe serve tcp|udp ADDR            listen and answer "ok\n" forever
//! gw-probe connect tcp|udp ADDR          one connect (UDP: connect + send)
//! gw-probe sendto ADDR                   one unconnected UDP datagram
//! gw-probe loop tcp ADDR COUNT GAP_MS    COUNT connects, one line each
//! gw-probe move-then-connect PROCS ADDR  make a socket, move into the cgroup
//!                                        whose cgroup.procs is PROCS, connect
//! gw-probe serve-reuseport ADDR          like serve tcp, with SO_REUSEPORT
//! gw-probe bind-reuseport-close ADDR     bind a TCP socket with SO_REUSEPORT
//!                                        next to another one, then close it
//! gw-probe bench ...                     the benchmark's loops (see `bench`)

mod bench;
mod mix;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["serve", "tcp", addr] => serve_tcp(addr),
        ["serve", "udp", addr] => serve_udp(addr),
        ["connect", "tcp", addr] => report(connect_tcp(addr)),
        ["connect", "udp", addr] => report(connect_udp(addr)),
        ["sendto", addr] => report(send_to(addr)),
        ["loop", "tcp", addr, count, gap] => connect_loop(addr, count, gap),
        ["move-then-connect", procs, addr] => report(move_then_connect(procs, addr)),
        ["serve-reuseport", addr] => serve_reuseport(addr),
        ["bind-reuseport-close", addr] => report(bind_reuseport(addr).map(close)),
        ["bench", rest @ ..] => bench::run(rest),
        _ => {
            eprintln!("usage: see the module documentation of gw-probe");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("gw-probe: {error}");
            ExitCode::from(3)
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn parse(addr: &str) -> Result<SocketAddr> {
    addr.parse().map_err(|e| format!("bad address {addr}: {e}"))
}

/// Prints the outcome as one word: ok, denied, refused, timeout or error.
fn report(outcome: std::io::Result<()>) -> Result<bool> {
    let word = outcome_word(&outcome);
    println!("{word}");
    Ok(outcome.is_ok())
}

fn outcome_word(outcome: &std::io::Result<()>) -> String {
    match outcome {
        Ok(()) => "ok".into(),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => "denied".into(),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused".into(),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            "timeout".into()
        }
        Err(e) => format!("error {e}"),
    }
}

fn serve_tcp(addr: &str) -> Result<bool> {
    let listener = TcpListener::bind(parse(addr)?).map_err(|e| e.to_string())?;
    println!("listening {}", listener.local_addr().map_err(|e| e.to_string())?);
    for mut stream in listener.incoming().flatten() {
        let _ = stream.write_all(b"ok\n");
    }
    Ok(true)
}

fn serve_udp(addr: &str) -> Result<bool> {
    let socket = UdpSocket::bind(parse(addr)?).map_err(|e| e.to_string())?;
    println!("listening {}", socket.local_addr().map_err(|e| e.to_string())?);
    let mut buf = [0u8; 512];
    loop {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(b"ok\n", from);
        }
    }
}

fn connect_tcp(addr: &str) -> std::io::Result<()> {
    let target = parse(addr).map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    read_ok(&mut stream)
}

fn read_ok(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0u8; 3];
    stream.read_exact(&mut buf)
}

fn udp_socket_for(target: &SocketAddr) -> std::io::Result<UdpSocket> {
    let local = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    Ok(socket)
}

fn connect_udp(addr: &str) -> std::io::Result<()> {
    let target = parse(addr).map_err(std::io::Error::other)?;
    let socket = udp_socket_for(&target)?;
    socket.connect(target)?;
    socket.send(b"hi")?;
    let mut buf = [0u8; 8];
    socket.recv(&mut buf).map(|_| ())
}

fn send_to(addr: &str) -> std::io::Result<()> {
    let target = parse(addr).map_err(std::io::Error::other)?;
    let socket = udp_socket_for(&target)?;
    socket.send_to(b"hi", target)?;
    let mut buf = [0u8; 8];
    socket.recv_from(&mut buf).map(|_| ())
}

fn connect_loop(addr: &str, count: &str, gap: &str) -> Result<bool> {
    let count: u32 = count.parse().map_err(|_| "bad count".to_owned())?;
    let gap = Duration::from_millis(gap.parse().map_err(|_| "bad gap".to_owned())?);
    for _ in 0..count.min(100_000) {
        println!("{}", outcome_word(&connect_tcp(addr)));
        std::thread::sleep(gap);
    }
    Ok(true)
}

fn move_then_connect(procs: &str, addr: &str) -> std::io::Result<()> {
    let target = parse(addr).map_err(std::io::Error::other)?;
    let domain = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall; the descriptor is checked and closed below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::write(procs, std::process::id().to_string())?;
    let result = raw_connect(fd, &target);
    // SAFETY: `fd` is ours and not used after this.
    unsafe { libc::close(fd) };
    result
}

fn raw_connect(fd: i32, target: &SocketAddr) -> std::io::Result<()> {
    let (storage, len) = sockaddr(target);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn sockaddr(target: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match target {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A TCP socket bound to `addr` with SO_REUSEADDR and SO_REUSEPORT.
fn bind_reuseport(addr: &str) -> std::io::Result<i32> {
    let target = parse(addr).map_err(std::io::Error::other)?;
    let domain = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscalls on a descriptor this function owns.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: `one` is a valid int for the option's duration.
        unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, option, (&raw const one).cast(), 4);
        }
    }
    let (storage, len) = sockaddr(&target);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, (&raw const storage).cast(), len) } != 0 {
        let error = std::io::Error::last_os_error();
        close(fd);
        return Err(error);
    }
    Ok(fd)
}

fn close(fd: i32) {
    // SAFETY: `fd` is owned by the caller and not used afterwards.
    unsafe { libc::close(fd) };
}

fn serve_reuseport(addr: &str) -> Result<bool> {
    let fd = bind_reuseport(addr).map_err(|e| e.to_string())?;
    // SAFETY: `fd` is a bound TCP socket we own; ownership moves to the
    // listener, which closes it.
    let listener = unsafe {
        if libc::listen(fd, 64) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    println!("listening {addr}");
    for mut stream in listener.incoming().flatten() {
        let _ = stream.write_all(b"ok\n");
    }
    Ok(true)
}
