//! pbft-tcp: the TCP transport (smol) for pbft nodes and clients.
//!
//! Each connection is a Noise channel whose two ends prove their ed25519 keys
//! ([`secure`]); nodes run the runtime-agnostic driver of `pbft-host` ([`node`]);
//! [`client`] opens a client session.

pub mod client;
pub mod link;
pub mod node;
pub mod secure;
