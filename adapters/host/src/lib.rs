//! pbft-host: the std pieces both transports (QUIC and TCP) share.
//!
//! The wire framing, the write-ahead log, the application store, the default key-value
//! application, key and config files, and the node driver that ties a replica, its log and its
//! application together.

pub mod application;
pub mod config;
pub mod driver;
pub mod framing;
pub mod kv;
pub mod metrics;
pub mod node;
pub mod session;
pub mod start;
pub mod store;
pub mod testnet;
pub mod wal;
pub mod wire;
