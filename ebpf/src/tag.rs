//! Socket tags: which cgroup created a socket, and which identity that means.
//!
//! The kernel fixes a socket's cgroup when the socket is created, and the
//! creating task is the current task at that moment. Tagging then, and judging
//! by the tag later, means that moving a process or passing a socket to
//! another process changes nothing about who the socket speaks for.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use gridward_common::{SockTag, identity, stat};

use crate::maps::{CGROUPS, SOCKETS, SUBTREES, count};

/// Deepest cgroup level searched for a managed subtree. cgroup trees on real
/// hosts (Kubernetes with the systemd driver) are well under this.
const MAX_CGROUP_DEPTH: i32 = 16;

/// The tag for a socket the current task creates now.
#[inline(always)]
pub fn tag_for_current() -> SockTag {
    // SAFETY: the helper takes no arguments and only reads the current task.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // A cgroup the agent has an entry for lies in a managed subtree (that is
    // the only place entries are made), so only unknown cgroups need the
    // ancestor walk, which is the costly part of tagging.
    let managed = CGROUPS.get_ptr(cgroup_id).is_some() || current_in_managed_subtree();
    SockTag { cgroup_id, managed: managed as u32, _pad: 0 }
}

/// Whether the current task's cgroup or one of its ancestors is a subtree
/// that selectors manage.
#[inline(always)]
fn current_in_managed_subtree() -> bool {
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: the helper only reads the current task's cgroup ancestry.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == 0 {
            // Past the task's own level: no more ancestors.
            return false;
        }
        if SUBTREES.get_ptr(ancestor).is_some() {
            return true;
        }
    }
    false
}

/// The tag of the socket a packet arrived for, from the socket's own cgroup
/// (packet hooks run without a meaningful current task).
#[inline(always)]
pub fn tag_for_skb(ctx: &SkBuffContext) -> SockTag {
    let skb = ctx.as_ptr().cast();
    // SAFETY: the helper reads the cgroup of the packet's socket.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let mut managed = false;
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: as above, for the socket cgroup's ancestors.
        let ancestor = unsafe { bpf_skb_ancestor_cgroup_id(skb, level) };
        if ancestor == 0 {
            break;
        }
        if SUBTREES.get_ptr(ancestor).is_some() {
            managed = true;
            break;
        }
    }
    SockTag { cgroup_id, managed: managed as u32, _pad: 0 }
}

/// The tag of an existing socket. A socket the programs never saw created
/// (it predates the agent, and sock_diag did not report it) falls back to the
/// calling task, which is the best the kernel can tell us then.
#[inline(always)]
pub fn tag_of_socket(cookie: u64) -> SockTag {
    match SOCKETS.get_ptr(cookie) {
        // SAFETY: the pointer comes from a successful lookup.
        Some(tag) => unsafe { *tag },
        None => {
            count(stat::UNTAGGED_SOCKETS);
            tag_for_current()
        }
    }
}

/// The identity a tag stands for under `slot`.
#[inline(always)]
pub fn identity_of(tag: &SockTag, slot: u32) -> u32 {
    let classified = match CGROUPS.get_ptr(tag.cgroup_id) {
        // SAFETY: the pointer comes from a successful lookup; `slot` is 0 or 1.
        Some(entry) => unsafe { (*entry).identity[(slot & 1) as usize] },
        None => identity::NONE,
    };
    if classified != identity::NONE {
        classified
    } else if tag.managed != 0 {
        // Managed but not classified (yet): never mistaken for the host.
        identity::UNCLASSIFIED
    } else {
        identity::HOST
    }
}
