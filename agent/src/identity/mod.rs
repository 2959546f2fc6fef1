//! The identity plane: X.509-SVIDs and trust bundles, the strict checks both
//! TLS sides run on a peer's certificate, a built-in CA for a single host, the
//! sources SVIDs come from, and rotation that renews them before they expire.
//!
//! Everything here is plain library code without kernel access, so it is
//! tested with real certificates and real TLS on loopback.

pub mod ca;
pub mod leaf;
pub mod rotation;
pub mod source;
pub mod svid;
pub mod verify;

#[cfg(test)]
pub(crate) mod testing;
