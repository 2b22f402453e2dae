//! pbft-host: the std pieces both transports (QUIC and TCP) share.
//!
//! Today it holds the wire framing, the write-ahead log and the default key-value
//! application; the node driver, config and key files join it as the transports land.

pub mod framing;
pub mod kv;
pub mod wal;
