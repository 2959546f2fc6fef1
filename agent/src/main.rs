//! gridward: identity-based enforcement between workloads, from the kernel.

mod config;
mod policy;
mod spiffe;

fn main() {}
