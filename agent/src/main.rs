//! gridward: identity-based enforcement between workloads, from the kernel.

mod spiffe;

fn main() {}
