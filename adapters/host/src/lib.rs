//! pbft-host: the std pieces both transports (QUIC and TCP) share.
//!
//! The wire framing, the write-ahead log, the default key-value application and the node
//! driver that ties a replica, its log and its application together; config and key files
//! join them as the transports land.

pub mod framing;
pub mod kv;
pub mod node;
pub mod wal;
