//! pbft-host: the std pieces both transports (QUIC and TCP) share.
//!
//! Today it holds the wire framing and the write-ahead log; the node driver, config, key
//! files and the default key-value application join it as the transports land.

pub mod framing;
pub mod wal;
