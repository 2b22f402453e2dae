//! QUIC connections between nodes and from clients: TLS 1.3 with pinned ed25519 keys,
//! length-delimited frames on one bidirectional stream per connection, a reconnecting link
//! per destination.
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
use pbft_host::driver::{self, Refusal, Role};
use pbft_host::framing::{self, Decoder, StreamEnd};
use pbft_host::metrics::NodeMetrics;
use pbft_host::session::Inbound;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use crate::identity::{ALPN_CLIENT, ALPN_PEER, AnyKeyClient, PinnedServer, certificate, peer_key};

/// Why a QUIC endpoint cannot be set up.
#[derive(Debug)]
pub enum TransportError {
    /// The key cannot be made into a certificate.
    Certificate(rcgen::Error),
    /// rustls refused the configuration.
    Tls(rustls::Error),
    /// quinn refused the TLS configuration.
    Quic(String),
    /// The socket cannot be bound.
    Io(std::io::Error),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Certificate(err) => write!(f, "certificate: {err}"),
            TransportError::Tls(err) => write!(f, "TLS: {err}"),
            TransportError::Quic(err) => write!(f, "QUIC: {err}"),
            TransportError::Io(err) => write!(f, "socket: {err}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// Application close codes, so the other side's logs say why.
pub mod close {
    use pbft_host::driver::Refusal;

    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// The key is not admitted for the role its ALPN asked for.
    pub const UNKNOWN_KEY: u32 = 1;
    /// The peer broke the framing (oversized length prefix).
    pub const BAD_FRAME: u32 = 2;
    /// Too many clients are connected.
    pub const BUSY: u32 = 3;

    /// The code that tells the other side why admission refused it.
    pub fn refused(refusal: Refusal) -> u32 {
        match refusal {
            Refusal::TooManyClients | Refusal::TooManyConnections => BUSY,
            Refusal::NoKey | Refusal::UnknownRole | Refusal::UnknownKey => UNKNOWN_KEY,
        }
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // One stream each way is all a connection uses; a few more cover reconnect races.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(4));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(5)).expect("5 s is a valid idle timeout"),
    ));
    Arc::new(transport)
}

/// The TLS and QUIC configuration of a node accepting connections.
pub fn server_config(keypair: &pbft_core::Keypair) -> Result<quinn::ServerConfig, TransportError> {
    let (cert, key) = certificate(keypair).map_err(TransportError::Certificate)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::Tls)?
        .with_client_cert_verifier(AnyKeyClient::new())
        .with_single_cert(vec![cert], key)
        .map_err(TransportError::Tls)?;
    tls.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// The TLS and QUIC configuration for dialling the holder of `expected` as `alpn`.
pub fn client_config(
    keypair: &pbft_core::Keypair,
    expected: PublicKey,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransportError> {
    let (cert, key) = certificate(keypair).map_err(TransportError::Certificate)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(PinnedServer::new(expected))
        .with_client_auth_cert(vec![cert], key)
        .map_err(TransportError::Tls)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
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

/// Reads frames from `recv` and hands each to `deliver`, until the stream ends.
pub async fn read_frames<F, Fut>(recv: &mut RecvStream, max: usize, mut deliver: F) -> StreamEnd
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut decoder = Decoder::new(max);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match recv.read(&mut buffer).await {
            Ok(Some(read)) => read,
            Ok(None) | Err(_) => return StreamEnd::at_end(&decoder),
        };
        if let Err(end) = framing::deliver(&mut decoder, &buffer[..read], &mut deliver).await {
            return end;
        }
    }
}

/// Writes the frames queued for one connection, several per write, until the queue closes
/// or the stream fails. Returns whether the queue is still open.
pub async fn write_frames(
    send: &mut SendStream,
    queue: &async_channel::Receiver<Vec<u8>>,
    max: usize,
) -> bool {
    loop {
        let Ok(first) = queue.recv().await else {
            return false;
        };
        if send
            .write_all(&framing::gather(first, queue, max))
            .await
            .is_err()
        {
            return true;
        }
    }
}

/// Keeps a connection to `addr` (the holder of `key`) open, reconnecting with backoff, and
/// writes `queue` to it; frames it sends back go to `inbound`. Frames queued while the
/// link is down wait (the queue is bounded); a frame in flight when a connection drops is
/// lost, which consensus and clients retransmit. Ends when `queue` closes.
pub async fn link(
    endpoint: Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
    queue: async_channel::Receiver<Vec<u8>>,
    max: usize,
    inbound: Option<Inbound>,
    connected: Option<pbft_host::metrics::Gauge>,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = FIRST_BACKOFF;
    loop {
        if queue.is_closed() && queue.is_empty() {
            return;
        }
        let connection = match endpoint.connect_with(config.clone(), addr, "pbft") {
            Ok(connecting) => connecting.await.ok(),
            Err(_) => None,
        };
        let Some(connection) = connection else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = FIRST_BACKOFF;
        let Ok((mut send, mut recv)) = connection.open_bi().await else {
            continue;
        };
        if let Some(gauge) = &connected {
            gauge.inc();
        }
        let reader = async {
            match &inbound {
                Some(inbound) => {
                    read_frames(&mut recv, max, inbound).await;
                }
                None => {
                    connection.closed().await;
                }
            }
        };
        let open = tokio::select! {
            open = write_frames(&mut send, &queue, max) => open,
            () = reader => true,
        };
        if let Some(gauge) = &connected {
            gauge.dec();
        }
        if !open {
            connection.close(VarInt::from_u32(close::SHUTDOWN), b"shutting down");
            return;
        }
    }
}

/// The key and role a finished handshake admits, or why it is refused.
pub fn admit(
    connection: &Connection,
    validators: &pbft_core::ValidatorSet,
    clients: usize,
) -> Result<(PublicKey, Role), Refusal> {
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
    driver::admits(validators, &key, role, clients)?;
    Ok((key, role))
}

/// Counts a refused connection or stream in the node's metrics.
pub fn refuse(metrics: &NodeMetrics, connection: &Connection, code: u32, reason: &'static str) {
    metrics.reject(reason);
    connection.close(VarInt::from_u32(code), reason.as_bytes());
}
