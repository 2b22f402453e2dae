//! QUIC connections between nodes and from clients: TLS 1.3 with pinned ed25519 raw public
//! keys (RFC 7250), length-delimited frames on one bidirectional stream per connection, a
//! reconnecting link per destination.
//!
//! A node accepts two kinds of connection on one UDP port, told apart by ALPN: validators
//! (`pbft-peer/1`), admitted only if their key is in the validator set, and clients
//! (`pbft-client/1`), admitted with any key (every request carries its client's signature,
//! and the core bounds what each client may queue). Both are decided before a byte of
//! the connection is read.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::PublicKey;
use pbft_host::driver::admission::Handshake;
use pbft_host::driver::{self, Refusal, Role, Slot};
use pbft_host::framing::{ReadHalf, WriteHalf};
use pbft_host::link::Dial;
use pbft_host::metrics::NodeMetrics;
use pbft_host::queue::Frames;
use pbft_host::serve::Timer;
use pbft_host::session::Inbound;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;

use crate::identity::{
    ALPN_CLIENT, ALPN_PEER, AnyKeyClient, PinnedServer, certified_key, peer_key,
};

/// Why a QUIC endpoint cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// rustls refused the configuration (or the key).
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC: {0}")]
    Quic(String),
    /// The socket cannot be bound.
    #[error("socket: {0}")]
    Io(std::io::Error),
}

/// Application close codes, so the other side's logs say why.
pub mod close {
    use pbft_host::driver::Refusal;

    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// The key is not admitted for the role its ALPN asked for.
    pub const UNKNOWN_KEY: u32 = 1;
    /// The peer broke the framing (oversized length prefix).
    pub const BAD_FRAME: u32 = 2;
    /// Too many connections of the kind asked for (clients, the validator's own places,
    /// handshakes) are open.
    pub const BUSY: u32 = 3;
    /// A client connection opened no stream within
    /// [`FIRST_STREAM_TIMEOUT`](crate::transport::FIRST_STREAM_TIMEOUT) of its handshake.
    pub const NO_STREAM: u32 = 4;
    /// The connection sent no frame for longer than it may stay idle, or took nothing the
    /// node wrote for longer than a write may wait.
    pub const IDLE: u32 = 5;

    /// The code that tells the other side why admission refused it.
    pub fn refused(refusal: Refusal) -> u32 {
        match refusal {
            Refusal::TooManyClients
            | Refusal::TooManyHandshakes
            | Refusal::TooManyFromAddress
            | Refusal::TooManyValidatorConnections => BUSY,
            Refusal::NoKey | Refusal::UnknownRole | Refusal::UnknownKey => UNKNOWN_KEY,
        }
    }
}

/// How long a client connection may stay without opening a stream after its handshake: a
/// client opens one to send its first frame, and a connection without one is never served
/// (nor ever idle in `serve`'s sense), so it would only hold a client place.
pub const FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection attempts quinn keeps waiting for the accept loop, at most (quinn's default is
/// 65,536): the loop takes them at once, so this only bounds a burst; beyond it quinn refuses.
const MAX_INCOMING: usize = 4 * driver::admission::MAX_HANDSHAKES;
/// Bytes quinn buffers for one connection attempt before it is accepted (default 10 MiB):
/// an Initial and a little 0-RTT data; more is dropped and retransmitted.
const INCOMING_BUFFER: u64 = 64 * 1024;
/// Bytes quinn buffers for all connection attempts together (default 100 MiB).
const INCOMING_BUFFER_TOTAL: u64 = 16 * 1024 * 1024;

/// The transport settings of a connection; `keep_alive`: whether this side pings to keep an
/// idle connection open.
fn transport_config(keep_alive: bool) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // One stream each way is all a connection uses; a few more cover reconnect races.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(4));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.keep_alive_interval(keep_alive.then_some(Duration::from_millis(500)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(5)).expect("5 s is a valid idle timeout"),
    ));
    Arc::new(transport)
}

/// The TLS and QUIC configuration of a node accepting connections.
pub fn server_config(keypair: &pbft_core::Keypair) -> Result<quinn::ServerConfig, TransportError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::Tls)?
        .with_client_cert_verifier(AnyKeyClient::new())
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
            certified_key(keypair).map_err(TransportError::Tls)?,
        )));
    tls.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // The dialling side keeps a connection alive; a node pinging every connection it
    // accepted would keep alive those whose other side stopped caring (or never did).
    config.transport_config(transport_config(false));
    config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(config)
}

/// The TLS and QUIC configuration for dialling the holder of `expected` as `alpn`.
pub fn client_config(
    keypair: &pbft_core::Keypair,
    expected: PublicKey,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransportError> {
    let presented = certified_key(keypair).map_err(TransportError::Tls)?;
    client_config_presenting(presented, expected, alpn)
}

/// [`client_config`] presenting `key` as it is (tests present keys they do not hold).
pub fn client_config_presenting(
    key: Arc<CertifiedKey>,
    expected: PublicKey,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransportError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(PinnedServer::new(expected))
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(key)));
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(true));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(towards: SocketAddr) -> Result<Endpoint, TransportError> {
    let bind: SocketAddr = if towards.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal address")
    } else {
        "[::]:0".parse().expect("literal address")
    };
    Endpoint::client(bind).map_err(TransportError::Io)
}

/// tokio's timer, for what the host's connection loops wait on.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioTimer;

impl Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

/// The receiving half of a QUIC stream, read into a buffer of its own.
pub struct Receiving {
    recv: RecvStream,
    buffer: Vec<u8>,
}

impl Receiving {
    /// Reads `recv` up to 64 KiB at a time.
    pub fn new(recv: RecvStream) -> Receiving {
        Receiving {
            recv,
            buffer: vec![0; 64 * 1024],
        }
    }
}

impl ReadHalf for Receiving {
    async fn read(&mut self) -> Option<&[u8]> {
        let read = self.recv.read(&mut self.buffer).await.ok()??;
        Some(&self.buffer[..read])
    }
}

/// The sending half of a QUIC stream.
pub struct Sending(pub SendStream);

impl WriteHalf for Sending {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes).await.map_err(std::io::Error::from)
    }
}

/// How long a link that ended waits for the other side to acknowledge what it wrote
/// before it closes the connection.
const LINGER: Duration = Duration::from_secs(2);

/// Dials the holder of a key at `addr` for a [`link`]: one QUIC connection at a time, its
/// frames on one bidirectional stream.
struct Dialer {
    endpoint: Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
    /// The connection the link uses now, to close when the link ends.
    open: Option<Connection>,
}

impl Dial for Dialer {
    type Reader = Receiving;
    type Writer = Sending;

    async fn dial(&mut self) -> Option<(Receiving, Sending)> {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, "pbft")
            .ok()?;
        let connection = connecting.await.ok()?;
        let (mut send, recv) = connection.open_bi().await.ok()?;
        // QUIC tells the other side of a stream only once something is sent on it: an empty
        // frame (a keep-alive to the node) opens it now, so a node can answer a client before
        // it writes, and does not close the connection as one that opened no stream.
        send.write_all(&[0; pbft_host::framing::PREFIX_LEN])
            .await
            .ok()?;
        self.open = Some(connection);
        Some((Receiving::new(recv), Sending(send)))
    }

    fn pause(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn hang_up(&mut self, mut writer: Sending, for_good: bool) {
        // A connection dropped to reconnect closes by itself once its last handle goes.
        if let Some(connection) = self.open.take()
            && for_good
        {
            // Closing at once would drop what the link wrote but QUIC has not yet delivered:
            // the last frames of a link that ends because its validator left the set are
            // the ones that tell it so. The stream is finished, and the connection closed
            // once the other side acknowledged it all (or after LINGER).
            let _ = writer.0.finish();
            let delivered = writer.0.stopped();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(LINGER, delivered).await;
                connection.close(VarInt::from_u32(close::SHUTDOWN), b"shutting down");
            });
        }
    }
}

/// Keeps a connection to `addr` (the holder of the key `config` pins) open, reconnecting
/// with backoff, and writes `queue` to it; frames it sends back go to `inbound`. See
/// [`pbft_host::link::link`]. Ends when `queue` closes.
pub async fn link(
    endpoint: Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
    queue: Frames,
    max: usize,
    inbound: Option<Inbound>,
    connected: Option<pbft_host::metrics::Gauge>,
) {
    let dialer = Dialer {
        endpoint,
        addr,
        config,
        open: None,
    };
    pbft_host::link::link(dialer, queue, max, inbound, connected).await;
}

/// Keeps a [`link`] to every peer `opened` hands over (see [`pbft_host::peers::Peers`]),
/// dialling as `keypair` for `alpn`, until the returned task is aborted (which aborts the
/// links too). Each link's inbound frames go where `inbound` says for its key (nowhere for
/// a validator's links: peers answer on their own).
pub fn spawn_links(
    endpoint: Endpoint,
    (keypair, alpn): (Arc<pbft_core::Keypair>, &'static [u8]),
    opened: pbft_host::peers::Links,
    max_frame: usize,
    connected: pbft_host::metrics::Gauge,
    inbound: impl Fn(PublicKey) -> Option<Inbound> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        while let Ok(peer) = opened.recv_async().await {
            let tls = match client_config(&keypair, peer.key, alpn) {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::error!(key = %peer.key, %err, "no link to a validator");
                    continue;
                }
            };
            // Links that ended (their validators left) are reaped as new ones start.
            while running.try_join_next().is_some() {}
            running.spawn(link(
                endpoint.clone(),
                peer.addr,
                tls,
                peer.queue,
                max_frame,
                inbound(peer.key),
                Some(connected.clone()),
            ));
        }
    })
}

/// The key and role a finished handshake admits, with the place it takes, or why it is
/// refused.
pub fn admit(
    connection: &Connection,
    handshake: Handshake,
) -> Result<(PublicKey, Role, Slot), Refusal> {
    let key = peer_key(connection).ok_or(Refusal::NoKey)?;
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    let role = match alpn.as_deref() {
        Some(ALPN_PEER) => Role::Validator,
        Some(ALPN_CLIENT) => Role::Client,
        _ => return Err(Refusal::UnknownRole),
    };
    let slot = handshake.admit(&key, role)?;
    Ok((key, role, slot))
}

/// Closes a connection admission refused, with the code that says why, and counts it.
pub fn refuse(metrics: &NodeMetrics, connection: &Connection, refusal: Refusal) {
    metrics.reject(refusal.reason());
    connection.close(
        VarInt::from_u32(close::refused(refusal)),
        refusal.reason().as_bytes(),
    );
}
