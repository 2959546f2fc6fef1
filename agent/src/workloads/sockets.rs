//! Sockets that existed before the programs were attached, found with
//! sock_diag (NETLINK_SOCK_DIAG). Its answer carries each socket's cookie and
//! cgroup id, which is exactly what the programs would have recorded at
//! creation and bind time. Only the agent's own network namespace is listed.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use gridward_common::{ipv4_mapped, protocol};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_LISTEN: u32 = 10;
const SO_NETNS_COOKIE: i32 = 71;

const NLMSG_HEADER: usize = 16;
const DIAG_MSG: usize = 72;
/// Upper bound on answers read, so a misbehaving kernel cannot keep us here.
const MAX_MESSAGES: usize = 1_000_000;

/// One socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSocket {
    pub cookie: u64,
    pub cgroup_id: u64,
    pub protocol: u8,
    /// Local address, IPv4 mapped into IPv6.
    pub addr: [u8; 16],
    pub port: u16,
    pub listening: bool,
}

/// Lists TCP listeners and all UDP sockets, IPv4 and IPv6.
pub fn existing_sockets() -> io::Result<Vec<ExistingSocket>> {
    let mut found = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        found.extend(dump(family, protocol::TCP, 1 << TCP_LISTEN)?);
        found.extend(dump(family, protocol::UDP, u32::MAX)?);
    }
    Ok(found)
}

/// The cookie of the network namespace the agent runs in.
pub fn own_netns_cookie() -> io::Result<u64> {
    let socket = netlink_socket()?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes and sized for the option.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let raw = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn dump(family: u8, proto: u8, states: u32) -> io::Result<Vec<ExistingSocket>> {
    let socket = netlink_socket()?;
    let request = request(family, proto, states);
    // SAFETY: the buffer is valid for reads of its length.
    let sent = unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..MAX_MESSAGES {
        // SAFETY: the buffer is valid for writes of its length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse_batch(&buf[..n as usize], family, proto, &mut found)? {
            break;
        }
    }
    Ok(found)
}

fn request(family: u8, proto: u8, states: u32) -> Vec<u8> {
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    let total = (NLMSG_HEADER + 56) as u32;
    let mut msg = Vec::with_capacity(total as usize);
    msg.extend_from_slice(&total.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    msg.extend_from_slice(&[family, proto, 0, 0]);
    msg.extend_from_slice(&states.to_ne_bytes());
    msg.extend_from_slice(&[0u8; 48]); // any socket id
    msg
}

/// Parses one datagram of answers; returns true at the end of the dump.
fn parse_batch(
    mut buf: &[u8],
    family: u8,
    proto: u8,
    found: &mut Vec<ExistingSocket>,
) -> io::Result<bool> {
    while buf.len() >= NLMSG_HEADER {
        let len = u32_at(buf, 0) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HEADER || len > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated sock_diag answer"));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => return Err(netlink_error(&buf[NLMSG_HEADER..len])),
            SOCK_DIAG_BY_FAMILY => {
                if let Some(socket) = parse_socket(&buf[NLMSG_HEADER..len], family, proto) {
                    found.push(socket);
                }
            }
            _ => {}
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(false)
}

fn parse_socket(msg: &[u8], family: u8, proto: u8) -> Option<ExistingSocket> {
    if msg.len() < DIAG_MSG {
        return None;
    }
    let state = msg[1];
    let port = u16::from_be_bytes([msg[4], msg[5]]);
    let addr = if family == libc::AF_INET as u8 {
        ipv4_mapped(u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]))
    } else {
        msg[8..24].try_into().ok()?
    };
    let cookie = u64::from(u32_at(msg, 44)) | (u64::from(u32_at(msg, 48)) << 32);
    let cgroup_id = find_u64_attr(&msg[DIAG_MSG..], INET_DIAG_CGROUP_ID)?;
    // TCP is dumped in LISTEN state only; a UDP socket with a port is bound.
    let listening = port != 0 && (proto == protocol::UDP || u32::from(state) == TCP_LISTEN);
    Some(ExistingSocket { cookie, cgroup_id, protocol: proto, addr, port, listening })
}

fn find_u64_attr(mut attrs: &[u8], wanted: u16) -> Option<u64> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == wanted && len >= 12 {
            return attrs[4..12].try_into().ok().map(u64::from_ne_bytes);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

fn netlink_error(payload: &[u8]) -> io::Error {
    let code = payload.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    if code == 0 {
        return io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink acknowledgement");
    }
    io::Error::from_raw_os_error(-code)
}

fn u32_at(buf: &[u8], offset: usize) -> u32 {
    buf.get(offset..offset + 4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_answers_are_refused_not_read_past() {
        let mut found = Vec::new();
        let mut bogus = vec![0u8; 20];
        bogus[..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(parse_batch(&bogus, 2, 6, &mut found).is_err());
        assert!(parse_socket(&[0u8; 10], 2, 6).is_none());
        assert_eq!(find_u64_attr(&[255, 0, 21, 0], INET_DIAG_CGROUP_ID), None);
    }
}
