//! The verdict for one (source, destination, port, protocol): pure map
//! lookups, no side effects, so every hook decides the same way.

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use aya_ebpf::maps::lpm_trie::Key;
use gridward_common::{
    AuthKey, IdentKey, RULE_KEY_FIXED_BITS, direction, ident_flags, identity, reason, rule_flags,
    rule_key_data, verdict,
};

use crate::maps::{AUTH, IDENTITIES, RULES};

/// What was decided and why.
pub struct Decision {
    pub verdict: u8,
    pub reason: u8,
    /// The rule that allowed it, or 0 when no rule decided.
    pub rule_id: u32,
    /// Whether the source is isolated for ingress (its UDP flows need their
    /// replies let through).
    pub src_isolated_ingress: bool,
}

impl Decision {
    /// Overrides a refusal: the datagram answers a flow allowed the other way.
    #[inline(always)]
    pub fn as_reply(&mut self) {
        self.verdict = verdict::ALLOW;
        self.reason = reason::REPLY;
        self.rule_id = 0;
    }
}

/// The outcome of one side's check (egress at the source, ingress at the
/// destination).
enum Side {
    /// This side is not isolated in this direction.
    Open,
    Allowed {
        rule_id: u32,
    },
    Refused {
        reason: u8,
        observe: bool,
    },
}

#[inline(always)]
pub fn decide(slot: u32, src: u32, dst: u32, port: u16, protocol: u8) -> Decision {
    let src_flags = flags_of(slot, src);
    let src_isolated_ingress = src_flags & ident_flags::ISOLATED_INGRESS != 0;
    if src == dst && src >= identity::FIRST_DYNAMIC {
        // A workload reaching its own identity moves nowhere new.
        let reason = reason::SAME_IDENTITY;
        return Decision { verdict: verdict::ALLOW, reason, rule_id: 0, src_isolated_ingress };
    }
    let dst_flags = flags_of(slot, dst);
    let egress = check(slot, direction::EGRESS, src, dst, port, protocol, src_flags);
    let ingress = check(slot, direction::INGRESS, src, dst, port, protocol, dst_flags);
    let mut decision = combine(egress, ingress);
    decision.src_isolated_ingress = src_isolated_ingress;
    decision
}

/// The verdict for a packet from another host: only the destination's
/// ingress side is judged here, the source's egress was its own host's job.
#[inline(always)]
pub fn decide_ingress(slot: u32, src: u32, dst: u32, port: u16, protocol: u8) -> Decision {
    let dst_flags = flags_of(slot, dst);
    let ingress = check(slot, direction::INGRESS, src, dst, port, protocol, dst_flags);
    combine(Side::Open, ingress)
}

/// An enforcing refusal wins over an observing one; an observing refusal
/// wins over an allow; the ingress rule names the decision when both allow.
#[inline(always)]
fn combine(egress: Side, ingress: Side) -> Decision {
    let mut audit: Option<u8> = None;
    for side in [&ingress, &egress] {
        if let Side::Refused { reason, observe } = side {
            if !observe {
                let (verdict, reason) = (verdict::DENY, *reason);
                return Decision { verdict, reason, rule_id: 0, src_isolated_ingress: false };
            }
            audit = Some(*reason);
        }
    }
    if let Some(reason) = audit {
        let verdict = verdict::AUDIT;
        return Decision { verdict, reason, rule_id: 0, src_isolated_ingress: false };
    }
    match (ingress, egress) {
        (Side::Allowed { rule_id }, _) | (_, Side::Allowed { rule_id }) => Decision {
            verdict: verdict::ALLOW,
            reason: reason::RULE,
            rule_id,
            src_isolated_ingress: false,
        },
        _ => Decision {
            verdict: verdict::ALLOW,
            reason: reason::NOT_ISOLATED,
            rule_id: 0,
            src_isolated_ingress: false,
        },
    }
}

#[inline(always)]
fn check(slot: u32, dir: u8, src: u32, dst: u32, port: u16, protocol: u8, flags: u32) -> Side {
    let isolated = match dir {
        direction::EGRESS => flags & ident_flags::ISOLATED_EGRESS,
        _ => flags & ident_flags::ISOLATED_INGRESS,
    };
    if isolated == 0 {
        return Side::Open;
    }
    let data = rule_key_data(slot as u8, dir, protocol, src, dst, port);
    let observe = flags & ident_flags::OBSERVE != 0;
    let Some(rule) = RULES.get(Key::new(RULE_KEY_FIXED_BITS + 16, data)) else {
        return Side::Refused { reason: refusal_reason(dir, src, dst), observe };
    };
    if rule.flags & rule_flags::REQUIRE_MTLS != 0 && !authenticated(src, dst) {
        return Side::Refused { reason: reason::NO_AUTH, observe };
    }
    Side::Allowed { rule_id: rule.rule_id }
}

/// Whether the pair holds a proof that has not expired.
#[inline(always)]
fn authenticated(src: u32, dst: u32) -> bool {
    let key = AuthKey { src_identity: src, dst_identity: dst };
    let Some(entry) = AUTH.get_ptr(key) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup; the helper takes
    // no arguments.
    unsafe { (*entry).expires_ns > bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn refusal_reason(dir: u8, src: u32, dst: u32) -> u8 {
    if src == identity::UNCLASSIFIED || dst == identity::UNCLASSIFIED {
        reason::UNCLASSIFIED
    } else if dir == direction::EGRESS {
        reason::NO_EGRESS_RULE
    } else {
        reason::NO_INGRESS_RULE
    }
}

/// An identity with no entry in this slot is one the agent has not compiled:
/// isolated both ways and enforcing, so nothing new slips through.
#[inline(always)]
fn flags_of(slot: u32, identity: u32) -> u32 {
    let key = IdentKey { slot, identity };
    match IDENTITIES.get_ptr(key) {
        // SAFETY: the pointer comes from a successful lookup.
        Some(entry) => unsafe { (*entry).flags },
        None => ident_flags::ISOLATED_INGRESS | ident_flags::ISOLATED_EGRESS,
    }
}
