//! Frames over a secure channel, and the reconnecting link a node keeps to each peer (and a
//! client to each validator).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::{ChainId, Keypair, PublicKey};
use pbft_host::framing::{self, Decoder, StreamEnd};
use pbft_host::metrics::Gauge;
use pbft_host::session::Inbound;
use smol::net::TcpStream;

use crate::secure::{Channel, Role, initiate};

/// Reads frames from a channel and hands each to `deliver`, until the stream ends (a
/// message that fails to decrypt ends it like broken framing).
pub async fn read_frames<F, Fut>(
    stream: &mut TcpStream,
    channel: &Channel,
    max: usize,
    mut deliver: F,
) -> StreamEnd
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut decoder = Decoder::new(max);
    loop {
        let plain = match channel.read(stream).await {
            Ok(Some(plain)) => plain,
            Ok(None) | Err(_) => return StreamEnd::at_end(&decoder),
        };
        if let Err(end) = framing::deliver(&mut decoder, &plain, &mut deliver).await {
            return end;
        }
    }
}

/// Writes the frames queued for a channel, several per write. Returns whether the queue is
/// still open (false: the link should close for good).
pub async fn write_frames(
    stream: &mut TcpStream,
    channel: &Channel,
    queue: &async_channel::Receiver<Vec<u8>>,
    max: usize,
) -> bool {
    while let Ok(first) = queue.recv().await {
        let batch = framing::gather(first, queue, max);
        if channel.write(stream, &batch).await.is_err() {
            return true;
        }
    }
    false
}

/// Who a link authenticates as, and whom it expects at the other end.
pub struct Identity {
    /// The network.
    pub chain: ChainId,
    /// This side's key.
    pub keypair: Arc<Keypair>,
    /// The role this side asks for.
    pub role: Role,
    /// The key the other side must prove.
    pub expected: PublicKey,
}

/// Keeps a channel to `addr` open, reconnecting with backoff, and writes `queue` to it;
/// frames it sends back go to `inbound`. Frames in flight when a connection drops are lost
/// (consensus and clients retransmit). Ends when `queue` closes.
pub async fn link(
    addr: SocketAddr,
    identity: Identity,
    queue: async_channel::Receiver<Vec<u8>>,
    max: usize,
    inbound: Option<Inbound>,
    connected: Option<Gauge>,
) {
    let mut backoff = Duration::from_millis(50);
    while !(queue.is_closed() && queue.is_empty()) {
        let opened = async {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            let _ = stream.set_nodelay(true);
            let channel = initiate(
                &mut stream,
                &identity.chain,
                &identity.keypair,
                identity.role,
                &identity.expected,
            )
            .await
            .ok()?;
            Some((stream, channel))
        }
        .await;
        let Some((stream, channel)) = opened else {
            smol::Timer::after(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(50);
        if let Some(gauge) = &connected {
            gauge.inc();
        }
        let (mut reader, mut writer) = (stream.clone(), stream);
        let reading = async {
            match &inbound {
                Some(inbound) => {
                    read_frames(&mut reader, &channel, max, inbound).await;
                }
                // A peer link only writes; reading tells when the other side went away.
                None => while let Ok(Some(_)) = channel.read(&mut reader).await {},
            }
            true
        };
        let open =
            smol::future::or(write_frames(&mut writer, &channel, &queue, max), reading).await;
        if let Some(gauge) = &connected {
            gauge.dec();
        }
        let _ = writer.shutdown(std::net::Shutdown::Both);
        if !open {
            return;
        }
    }
}
