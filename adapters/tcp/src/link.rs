//! A secure channel's two halves as the host's frame loops read and write them, and the
//! reconnecting link a node keeps to each peer (and a client to each validator).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::{ChainId, Keypair, PublicKey};
use pbft_host::framing::{ReadHalf, WriteHalf};
use pbft_host::link::Dial;
use pbft_host::metrics::Gauge;
use pbft_host::queue::Frames;
use pbft_host::serve::Timer;
use pbft_host::session::Inbound;
use smol::net::TcpStream;

use crate::secure::{Channel, Role, initiate};

/// One half of a channel over a TCP stream (each half holds its own handle of the stream).
pub struct Secured {
    stream: TcpStream,
    channel: Channel,
    /// The last message read, decrypted.
    plain: Vec<u8>,
}

impl Secured {
    /// The reading and the writing half of `channel` over `stream`.
    pub fn halves(stream: TcpStream, channel: Channel) -> (Secured, Secured) {
        let reader = Secured {
            stream: stream.clone(),
            channel: channel.clone(),
            plain: Vec::new(),
        };
        let writer = Secured {
            stream,
            channel,
            plain: Vec::new(),
        };
        (reader, writer)
    }
}

impl ReadHalf for Secured {
    /// One Noise message at a time; one that fails to decrypt ends the stream like broken
    /// framing.
    async fn read(&mut self) -> Option<&[u8]> {
        self.plain = self.channel.read(&mut self.stream).await.ok()??;
        Some(&self.plain)
    }
}

impl WriteHalf for Secured {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.channel.write(&mut self.stream, bytes).await
    }
}

/// smol's timer, for what the host's connection loops wait on.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolTimer;

impl Timer for SmolTimer {
    async fn sleep(&self, duration: Duration) {
        smol::Timer::after(duration).await;
    }
}

/// Idle time before the first keep-alive probe on a connection.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between keep-alive probes.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes after which the kernel drops the connection.
const KEEP_ALIVE_PROBES: u32 = 3;
/// Longest time data written may stay unacknowledged before the kernel drops the
/// connection (keep-alive probes are not sent while data is outstanding).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
const USER_TIMEOUT: Duration = Duration::from_secs(25);

/// Makes the kernel drop `stream` within about 25 s once the other side vanished (a host
/// that crashed or a cable cut sends no FIN nor RST): TCP keep-alive while idle, and a user
/// timeout while data is unacknowledged. Without them a dead peer's connection would hold
/// its place, and its validator's reconnects would queue behind it, for the kernel's
/// defaults: two hours idle, about 15 minutes of retransmissions. An idle but live peer
/// answers the probes and stays; idle clients are `serve`'s business. Best effort: a socket
/// that refuses the options keeps the kernel's defaults.
pub(crate) fn keep_alive(stream: &TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let keep_alive = socket2::TcpKeepalive::new()
        .with_time(KEEP_ALIVE_IDLE)
        .with_interval(KEEP_ALIVE_INTERVAL)
        .with_retries(KEEP_ALIVE_PROBES);
    let _ = socket.set_tcp_keepalive(&keep_alive);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let _ = socket.set_tcp_user_timeout(Some(USER_TIMEOUT));
}

/// Who a link authenticates as, and whom it expects at the other end.
pub struct Identity {
    /// The network.
    pub chain: ChainId,
    /// This side's key.
    pub keypair: Arc<Keypair>,
    /// The role this side asks for.
    pub role: Role,
    /// A validator's listening port, which it tells the node it dials.
    pub listens: Option<u16>,
    /// The key the other side must prove.
    pub expected: PublicKey,
}

/// Dials `addr` for a [`link`] and proves `identity` in the handshake.
struct Dialer {
    addr: SocketAddr,
    identity: Identity,
}

impl Dial for Dialer {
    type Reader = Secured;
    type Writer = Secured;

    async fn dial(&mut self) -> Option<(Secured, Secured)> {
        let mut stream = TcpStream::connect(self.addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        keep_alive(&stream);
        let identity = &self.identity;
        let channel = initiate(
            &mut stream,
            &identity.chain,
            &identity.keypair,
            (identity.role, identity.listens),
            &identity.expected,
        )
        .await
        .ok()?;
        Some(Secured::halves(stream, channel))
    }

    async fn pause(&self, duration: Duration) {
        smol::Timer::after(duration).await;
    }

    fn hang_up(&mut self, writer: Secured, _for_good: bool) {
        let _ = writer.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Keeps a channel to `addr` open, reconnecting with backoff, and writes `queue` to it;
/// frames it sends back go to `inbound`. See [`pbft_host::link::link`]. Ends when `queue`
/// closes.
pub async fn link(
    addr: SocketAddr,
    identity: Identity,
    queue: Frames,
    max: usize,
    inbound: Option<Inbound>,
    connected: Option<Gauge>,
) {
    pbft_host::link::link(Dialer { addr, identity }, queue, max, inbound, connected).await;
}
