//! gridward: identity-based enforcement between workloads, from the kernel.

#[cfg_attr(not(test), expect(dead_code, reason = "wired into the agent in a later change"))]
mod identity;
#[cfg_attr(not(test), expect(dead_code, reason = "wired into the agent in a later change"))]
mod peering;
mod spiffe;

fn main() {}
