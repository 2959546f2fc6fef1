//! gridward's kernel programs, attached at the root of the agent's cgroup scope.
//!
//! `sock` tags every socket with the cgroup that created it and records
//! listeners; `addr` judges every connect and unconnected send by the
//! identities of both ends. The programs only read the policy the agent wrote
//! into the maps; they never decide anything the maps do not say.

#![no_std]
#![no_main]
// The BPF target has no atomic types; the intrinsic lowers to BPF_ATOMIC.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod addr;
mod decide;
mod flows;
mod listeners;
mod maps;
mod report;
mod skb;
mod sock;
mod tag;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here, so this never runs.
    loop {}
}
