//! Counters and events. Every verdict is counted exactly; events are
//! rate-limited per pair so that a flood of denials cannot starve the agent,
//! and they are submitted without waking the reader (the agent polls), which
//! is what keeps the cost of a connect low.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use gridward_common::{
    ALLOWED_PAIR_EVENT_INTERVAL_NS, Event, PAIR_EVENT_INTERVAL_NS, PairKey, PairStats, maps, stat,
    verdict,
};

use crate::{
    decide::Decision,
    maps::{EVENTS, PAIRS, count, revision},
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Wake the reader once the ring is this full, so a burst never overruns it
/// between two polls.
const WAKEUP_THRESHOLD: u64 = (maps::EVENTS_BYTES / 4) as u64;

/// Everything about one judged call that an event reports.
pub struct Call {
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub src_addr: [u8; 16],
    pub src_port: u16,
    pub dst_addr: [u8; 16],
    pub dst_port: u16,
    /// Whether a calling task made the call (socket hooks) or none did
    /// (packet hooks); its pid and command are read only for an event.
    pub from_task: bool,
    pub cgroup_id: u64,
    pub socket_cookie: u64,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// The policy slot the verdict was read from; its revision is looked up
    /// only when an event is sent.
    pub slot: u32,
}

#[inline(always)]
pub fn report(call: &Call, decision: &Decision) {
    count(stat::VERDICT_BASE + decision.verdict as u32);
    count(stat::REASON_BASE + decision.reason as u32);

    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some(repeats) = pair_due(call, decision.verdict, now) else {
        count(stat::EVENTS_SUPPRESSED);
        return;
    };
    emit(call, decision, now, repeats);
}

/// Counts the verdict for its pair and says whether an event is due, with
/// the number of verdicts it stands for.
#[inline(always)]
fn pair_due(call: &Call, verdict: u8, now: u64) -> Option<u64> {
    let key = PairKey {
        src_identity: call.src_identity,
        dst_identity: call.dst_identity,
        port: call.dst_port,
        protocol: call.protocol,
        verdict,
    };
    let Some(stats) = PAIRS.get_ptr_mut(key) else {
        let first = PairStats { count: 1, last_event_ns: now, count_at_last_event: 1 };
        let _ = PAIRS.insert(key, first, 0);
        return Some(1);
    };
    // SAFETY: the pointer comes from a successful lookup and stays valid for
    // this program run. The counter is added to atomically (other CPUs count
    // the same pair); the total is read back separately because the BPF
    // backend lowers this add without fetching the old value.
    let total = unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).count, 1);
        core::ptr::read_volatile(&raw const (*stats).count)
    };
    let interval = match verdict {
        verdict::ALLOW => ALLOWED_PAIR_EVENT_INTERVAL_NS,
        _ => PAIR_EVENT_INTERVAL_NS,
    };
    // SAFETY: as above; a racing CPU may send one extra event, never fewer.
    unsafe {
        if now.wrapping_sub((*stats).last_event_ns) < interval {
            return None;
        }
        let repeats = total.saturating_sub((*stats).count_at_last_event);
        (*stats).last_event_ns = now;
        (*stats).count_at_last_event = total;
        Some(repeats)
    }
}

#[inline(always)]
fn emit(call: &Call, decision: &Decision, now: u64, repeats: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::EVENTS_LOST);
        return;
    };
    let event = Event {
        timestamp_ns: now,
        cgroup_id: call.cgroup_id,
        socket_cookie: call.socket_cookie,
        repeats,
        pid: if call.from_task { (bpf_get_current_pid_tgid() >> 32) as u32 } else { 0 },
        src_identity: call.src_identity,
        dst_identity: call.dst_identity,
        rule_id: decision.rule_id,
        revision: revision(call.slot),
        src_addr: call.src_addr,
        dst_addr: call.dst_addr,
        src_port: call.src_port,
        dst_port: call.dst_port,
        protocol: call.protocol,
        family: call.family,
        hook: call.hook,
        verdict: decision.verdict,
        reason: decision.reason,
        _pad: [0; 3],
        comm: if call.from_task {
            bpf_get_current_comm().unwrap_or([0; gridward_common::COMM_LEN])
        } else {
            [0; gridward_common::COMM_LEN]
        },
    };
    entry.write(event);
    entry.submit(wakeup_flag());
    count(stat::EVENTS_SENT);
}

#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKEUP_THRESHOLD {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
