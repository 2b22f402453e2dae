//! pbft-host: the std pieces both transports (QUIC and TCP) share.
//!
//! The wire framing, the write-ahead log, the application store, the default key-value
//! application, key and config files, the node driver that ties a replica, its log and its
//! application together, and what a transport does once it has a connection: [`serve`] one
//! it accepted, keep a [`link`] to one it dials.

pub mod application;
pub mod checks;
pub mod compression;
pub mod config;
pub mod data_dir;
pub mod driver;
pub mod framing;
mod fused;
pub mod gateway;
pub mod kv;
pub mod link;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod queue;
mod race;
pub mod serve;
pub mod session;
pub mod snapshots;
pub mod start;
pub mod store;
#[cfg(test)]
mod testing;
pub mod testnet;
pub mod wal;
pub mod wire;
mod worker;
