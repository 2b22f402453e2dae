//! pbft-host: the std pieces both transports (QUIC and TCP) share.
//!
//! Today it holds the wire framing; the node driver, config, key files, the file WAL and the
//! default key-value application join it as the transports land.

pub mod framing;
