//! The event as operators see it: identities by name, wall-clock time,
//! readable verdicts. The same record is streamed to observers, written to
//! the audit log and parsed back by `gridward observe`.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use gridward_common::{Event, hook, identity, protocol, reason, verdict};
use serde::{Deserialize, Serialize};

use super::NameBook;

/// One judged connection or datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub verdict: String,
    pub reason: String,
    pub hook: String,
    pub protocol: String,
    pub src: String,
    pub src_cgroup: Option<String>,
    pub dst: String,
    pub dst_addr: String,
    pub dst_port: u16,
    pub pid: u32,
    pub comm: String,
    pub rule: Option<String>,
    pub rule_id: u32,
    pub revision: u32,
    /// Verdicts of this pair that this event stands for (itself included).
    pub repeats: u64,
}

/// Converts boot-time nanoseconds to wall-clock time.
pub struct Clock {
    wall: SystemTime,
    boot_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self { wall: SystemTime::now(), boot_ns: boottime_ns() }
    }

    fn wall_time(&self, event_ns: u64) -> SystemTime {
        let age = Duration::from_nanos(self.boot_ns.saturating_sub(event_ns));
        self.wall.checked_sub(age).unwrap_or(self.wall)
    }
}

/// Boot-time nanoseconds now (`CLOCK_BOOTTIME`, as `bpf_ktime_get_boot_ns`).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is valid for writes; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

impl EventRecord {
    pub fn from_kernel(event: &Event, names: &NameBook, clock: &Clock) -> Self {
        let time = humantime::format_rfc3339_millis(clock.wall_time(event.timestamp_ns));
        Self {
            time: time.to_string(),
            verdict: verdict_name(event.verdict).to_owned(),
            reason: reason_name(event.reason).to_owned(),
            hook: hook_name(event.hook).to_owned(),
            protocol: protocol_name(event.protocol).to_owned(),
            src: names.identity(event.src_identity),
            src_cgroup: names.cgroups.get(&event.cgroup_id).cloned(),
            dst: names.identity(event.dst_identity),
            dst_addr: address_text(&event.dst_addr),
            dst_port: event.dst_port,
            pid: event.pid,
            comm: comm_text(&event.comm),
            rule: names.rule(event.revision, event.rule_id),
            rule_id: event.rule_id,
            revision: event.revision,
            repeats: event.repeats,
        }
    }
}

pub fn reserved_identity_name(number: u32) -> String {
    match number {
        identity::NONE => "none".into(),
        identity::HOST => "host".into(),
        identity::WORLD => "world".into(),
        identity::UNCLASSIFIED => "unclassified".into(),
        identity::THIS_HOST => "this-host".into(),
        other => format!("identity-{other}"),
    }
}

pub fn verdict_name(value: u8) -> &'static str {
    match value {
        verdict::ALLOW => "allow",
        verdict::AUDIT => "would-deny",
        verdict::DENY => "deny",
        _ => "unknown",
    }
}

pub fn reason_name(value: u8) -> &'static str {
    match value {
        reason::NOT_ISOLATED => "not-isolated",
        reason::RULE => "rule",
        reason::NO_EGRESS_RULE => "no-egress-rule",
        reason::NO_INGRESS_RULE => "no-ingress-rule",
        reason::UNCLASSIFIED => "unclassified",
        reason::NO_AUTH => "no-auth",
        reason::REPLY => "reply",
        reason::SAME_IDENTITY => "same-identity",
        _ => "unknown",
    }
}

fn hook_name(value: u8) -> &'static str {
    match value {
        hook::CONNECT4 => "connect4",
        hook::CONNECT6 => "connect6",
        hook::SENDMSG4 => "sendmsg4",
        hook::SENDMSG6 => "sendmsg6",
        hook::POST_BIND => "bind",
        hook::SOCK_CREATE => "socket",
        hook::INGRESS => "ingress",
        _ => "unknown",
    }
}

pub fn protocol_name(value: u8) -> &'static str {
    match value {
        protocol::TCP => "tcp",
        protocol::UDP => "udp",
        _ => "other",
    }
}

/// IPv4-mapped addresses print as IPv4.
fn address_text(bytes: &[u8; 16]) -> String {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4).to_string(),
        None => IpAddr::V6(v6).to_string(),
    }
}

fn comm_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_addresses() {
        let mut book = NameBook::default();
        book.identities.insert(16, "spiffe://grid.local/a".into());
        book.set_rules(3, vec!["first".into()]);
        let mut event = Event::zeroed();
        event.src_identity = 16;
        event.dst_identity = identity::WORLD;
        event.verdict = verdict::DENY;
        event.reason = reason::NO_INGRESS_RULE;
        event.protocol = protocol::TCP;
        event.dst_addr = gridward_common::ipv4_mapped(u32::from_ne_bytes([127, 0, 0, 1]));
        event.dst_port = 8443;
        event.revision = 3;
        event.rule_id = 1;
        event.comm[..5].copy_from_slice(b"probe");
        let record = EventRecord::from_kernel(&event, &book, &Clock::now());
        assert_eq!(record.src, "spiffe://grid.local/a");
        assert_eq!(record.dst, "world");
        assert_eq!(record.verdict, "deny");
        assert_eq!(record.reason, "no-ingress-rule");
        assert_eq!(record.dst_addr, "127.0.0.1");
        assert_eq!(record.comm, "probe");
        assert_eq!(record.rule.as_deref(), Some("first"));
    }
}
