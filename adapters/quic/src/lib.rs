//! pbft-quic: the QUIC transport (tokio + quinn) for pbft nodes and clients, and the
//! `pbft` binary operators run.
//!
//! Nodes authenticate each other and their clients by ed25519 key at the TLS handshake
//! ([`identity`]), carry frames over reconnecting links ([`transport`]), and run the
//! runtime-agnostic node driver of `pbft-host` ([`node`]). [`client`] is the client side;
//! [`gateway`] runs a gateway between many clients and the validators.

pub mod bench;
pub mod client;
pub mod data;
pub mod gateway;
pub mod identity;
pub mod node;
pub mod operator;
pub mod status;
pub mod transport;
