//! Serves a connection a transport accepted and admitted, whatever carries it: a
//! validator's frames go to the node; a client's too, and the node's frames for that client
//! go back on the same connection.
//!
//! What a connection may cost is bounded here, the same for every transport: a client's
//! frames are at most the largest request ([`crate::wire::max_client_frame`]) and are paced
//! per kind ([`ServeLimits`]; beyond its rate a connection is not read until its budget
//! refills: nothing is lost, it only waits); a connection that completes no frame for its
//! idle time is closed (validators send a status every heartbeat, so only a dead or hostile
//! one is ever idle; an empty frame is a keep-alive), and so is one that does not take what
//! the node writes to it for [`WRITE_STALL`] (its queue would otherwise hold its bytes, and
//! the share of every client's budget they take, for as long as it likes).

use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use pbft_core::{Config, PublicKey};

use crate::driver::admission::Members;
use crate::driver::{Driver, Input, Role, Router};
use crate::framing::{ReadHalf, StreamEnd, WriteHalf, gather, read_frames};
use crate::queue::Frames;
use crate::race::first;
use crate::wire::{ClientFrame, FrameKind};

/// Frames a client connection may send per second, sustained (a gateway's connection
/// carries many clients' requests, so this is generous: it bounds what one connection can
/// take from the node's thread, not what a client needs).
pub const CLIENT_FRAMES_PER_SECOND: u32 = 20_000;
/// Relay claims a client connection may send per second, sustained: a gateway names itself
/// once per client it relays, so a steady stream of them is a flood.
pub const RELAY_CLAIMS_PER_SECOND: u32 = 1_000;
/// Status and proof queries a client connection may send per second, sustained (the node
/// answers [`crate::driver::QUERIES_PER_KEY_PER_SECOND`] of them).
pub const QUERIES_PER_CONNECTION_PER_SECOND: u32 = 100;
/// A connection that has not taken a write of what the node sends it for this long is
/// closed.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// A client connection that sends no frame for this long is closed (clients retransmit
/// within seconds; one that comes back reconnects).
pub const CLIENT_IDLE: Duration = Duration::from_secs(30);
/// A validator connection that sends nothing for this many heartbeats (or
/// [`CLIENT_IDLE`], if longer) is closed: the other side is gone without a word.
pub const VALIDATOR_IDLE_HEARTBEATS: u32 = 10;

/// The transport's timer, for what `serve` waits on.
pub trait Timer: Send + Sync {
    /// Waits `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// How big a connection's frames may be, and how long and how fast it may send them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// The largest frame a validator sends, and the node writes, in bytes.
    pub frame: usize,
    /// The largest frame a client sends, in bytes.
    pub client_frame: usize,
    /// How long a client connection may send nothing.
    pub client_idle: Duration,
    /// How long a validator connection may send nothing.
    pub validator_idle: Duration,
    /// Requests (and frames of unknown kind) a client connection may send per second,
    /// sustained; also the burst.
    pub client_frames_per_second: u32,
    /// Relay claims a client connection may send per second; the burst is four seconds'.
    pub relay_claims_per_second: u32,
    /// Status and proof queries a client connection may send per second; also the burst.
    pub queries_per_second: u32,
    /// How long a write may wait for the other side to take it.
    pub write_stall: Duration,
}

impl ServeLimits {
    /// The limits under the core's `config`, whose largest message is `frame` bytes once
    /// framed.
    pub fn new(config: &Config, frame: usize) -> ServeLimits {
        let heartbeats =
            Duration::from_millis(config.heartbeat_ms).saturating_mul(VALIDATOR_IDLE_HEARTBEATS);
        ServeLimits {
            frame,
            client_frame: crate::wire::max_client_frame(config),
            client_idle: CLIENT_IDLE,
            validator_idle: heartbeats.max(CLIENT_IDLE),
            client_frames_per_second: CLIENT_FRAMES_PER_SECOND,
            relay_claims_per_second: RELAY_CLAIMS_PER_SECOND,
            queries_per_second: QUERIES_PER_CONNECTION_PER_SECOND,
            write_stall: WRITE_STALL,
        }
    }
}

/// A token bucket: a frame costs one token, tokens refill at `rate` a second up to `burst`.
/// A frame beyond them runs a debt, and the reader waits until it is paid. A bucket starts
/// with a tenth of its burst, so a connection (or QUIC stream) opened afresh buys little.
#[derive(Debug)]
struct Pace {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pace {
    fn new(rate: u32, burst: u32) -> Pace {
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        Pace {
            rate,
            burst,
            tokens: burst / 10.0,
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; how long to wait before the frame goes on.
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        match self.tokens >= 0.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64(-self.tokens / self.rate),
        }
    }
}

/// A client connection's buckets, one per kind of frame.
#[derive(Debug)]
struct Paces {
    requests: Pace,
    claims: Pace,
    queries: Pace,
}

impl Paces {
    fn new(limits: &ServeLimits) -> Paces {
        let claims = limits.relay_claims_per_second;
        Paces {
            requests: Pace::new(
                limits.client_frames_per_second,
                limits.client_frames_per_second,
            ),
            claims: Pace::new(claims, claims.saturating_mul(4)),
            queries: Pace::new(limits.queries_per_second, limits.queries_per_second),
        }
    }

    /// How long `frame` waits for its kind's budget.
    fn take(&mut self, frame: &[u8], now: Instant) -> Duration {
        let pace = match ClientFrame::kind(frame) {
            Some(FrameKind::Relay) => &mut self.claims,
            Some(FrameKind::Query) => &mut self.queries,
            Some(FrameKind::Request) | None => &mut self.requests,
        };
        pace.take(now)
    }
}

/// A receiving half that ends (as if closed) once no frame completed for `idle`, and says
/// so. Bytes that complete no frame do not count: a connection cannot stay by trickling.
struct Watched<'a, R, T> {
    inner: R,
    timer: &'a T,
    idle: Duration,
    /// When a frame last completed, in ms since `start`.
    last_frame_ms: &'a AtomicU64,
    start: Instant,
    idled: bool,
}

impl<R: ReadHalf, T: Timer> ReadHalf for Watched<'_, R, T> {
    async fn read(&mut self) -> Option<&[u8]> {
        let since = Duration::from_millis(self.last_frame_ms.load(Ordering::Relaxed));
        let left = (since + self.idle).saturating_sub(self.start.elapsed());
        let (inner, timer, idled) = (&mut self.inner, self.timer, &mut self.idled);
        let timeout = async {
            timer.sleep(left).await;
            *idled = true;
            None
        };
        first(inner.read(), timeout).await
    }
}

/// Writes the frames queued for a connection, several per write, until the queue closes,
/// the stream fails, or a write waits longer than `stall` (then true).
async fn write_within<W: WriteHalf, T: Timer>(
    writer: &mut W,
    queue: &Frames,
    max: usize,
    timer: &T,
    stall: Duration,
) -> bool {
    while let Some(frame) = queue.recv().await {
        let stalled = async {
            timer.sleep(stall).await;
            Err(std::io::ErrorKind::TimedOut.into())
        };
        match first(writer.write(&gather(frame, queue, max)), stalled).await {
            Ok(()) => {}
            Err(err) => return err.kind() == std::io::ErrorKind::TimedOut,
        }
    }
    false
}

/// Serves one admitted connection (or QUIC stream) of `key` in `role` until it ends, and
/// says how: a transport that can tell the other side why closes an
/// [`StreamEnd::Oversized`] or [`StreamEnd::Idle`] connection with a reason. Broken framing,
/// idleness and stalled writes are counted here (`truncated_frame`, `oversized_frame`,
/// `idle_connection`, `stalled_connection`).
#[allow(clippy::too_many_arguments)]
pub async fn serve<R: ReadHalf, W: WriteHalf, T: Timer>(
    key: PublicKey,
    role: Role,
    reader: R,
    mut writer: W,
    driver: &Driver,
    router: &Router,
    limits: &ServeLimits,
    timer: &T,
) -> StreamEnd {
    let idle = match role {
        Role::Validator => limits.validator_idle,
        Role::Client => limits.client_idle,
    };
    let start = Instant::now();
    let last_frame_ms = AtomicU64::new(0);
    let framed = || {
        last_frame_ms.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    let mut reader = Watched {
        inner: reader,
        timer,
        idle,
        last_frame_ms: &last_frame_ms,
        start,
        idled: false,
    };
    let end = match role {
        Role::Validator => {
            // A key that left the set (an epoch began without it) is heard no more: its
            // connection ends at its next frame.
            let removed = std::sync::atomic::AtomicBool::new(false);
            let end = read_frames(&mut reader, limits.frame, |bytes| {
                framed();
                let member = router.peers().is_member(&key);
                removed.store(!member, Ordering::Relaxed);
                async move {
                    // An empty frame is a keep-alive.
                    member
                        && (bytes.is_empty()
                            || driver.input(Input::Peer { from: key, bytes }).await)
                }
            })
            .await;
            match removed.load(Ordering::Relaxed) {
                true => StreamEnd::Removed,
                false => end,
            }
        }
        Role::Client => {
            let queue = router.attach_client(key);
            let connection = queue.connection;
            let mut paces = Paces::new(limits);
            let reading = read_frames(&mut reader, limits.client_frame, |bytes| {
                framed();
                let wait = match bytes.is_empty() {
                    true => Duration::ZERO,
                    false => paces.take(&bytes, Instant::now()),
                };
                async move {
                    if bytes.is_empty() {
                        return true;
                    }
                    if !wait.is_zero() {
                        timer.sleep(wait).await;
                    }
                    let input = Input::Client {
                        from: key,
                        connection,
                        bytes,
                    };
                    driver.input(input).await
                }
            });
            let writing = async {
                match write_within(
                    &mut writer,
                    &queue.frames,
                    limits.frame,
                    timer,
                    limits.write_stall,
                )
                .await
                {
                    true => StreamEnd::Stalled,
                    false => StreamEnd::Closed,
                }
            };
            let end = first(reading, writing).await;
            router.detach_client(&key, &queue);
            end
        }
    };
    let end = match reader.idled {
        true => StreamEnd::Idle,
        false => end,
    };
    match end {
        StreamEnd::Closed => {}
        StreamEnd::Truncated => driver.metrics().reject("truncated_frame"),
        StreamEnd::Oversized => driver.metrics().reject("oversized_frame"),
        StreamEnd::Idle => driver.metrics().reject("idle_connection"),
        StreamEnd::Stalled => driver.metrics().reject("stalled_connection"),
        StreamEnd::Removed => driver.metrics().reject("validator_removed"),
    }
    end
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pbft_core::Keypair;

    use super::*;
    use crate::framing::encode;
    use crate::metrics::NodeMetrics;
    use crate::peers::Peers;
    use crate::testing::{Chunks, Silent, TestTimer, Writes, block_on};
    use crate::wire::ServerFrame;

    fn key() -> PublicKey {
        Keypair::from_seed(&[3; 32]).public_key()
    }

    /// The router of a node whose one peer is `key()`.
    fn router() -> Arc<Router> {
        let metrics = Arc::new(NodeMetrics::new());
        let me = Keypair::from_seed(&[4; 32]).public_key();
        let (peers, _links) =
            Peers::new(me, (vec![me, key()], vec![]), [], 1 << 20, metrics.clone());
        Router::new(peers, None, metrics)
    }

    fn limits() -> ServeLimits {
        ServeLimits {
            frame: 64,
            client_frame: 16,
            client_idle: Duration::from_secs(30),
            validator_idle: Duration::from_secs(30),
            client_frames_per_second: 1000,
            relay_claims_per_second: 10,
            queries_per_second: 10,
            write_stall: Duration::from_secs(10),
        }
    }

    fn never() -> TestTimer {
        TestTimer {
            never: true,
            ..TestTimer::default()
        }
    }

    #[test]
    fn a_validators_frames_go_to_the_node_and_a_frame_cut_short_is_counted() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let stream = [encode(b"vote", 64).unwrap(), encode(b"cut", 64).unwrap()].concat();
        let reader = Chunks::new([stream[..stream.len() - 1].to_vec()]);
        let end = block_on(serve(
            key(),
            Role::Validator,
            reader,
            Writes::default(),
            &driver,
            &router(),
            &limits(),
            &never(),
        ));
        assert_eq!(end, StreamEnd::Truncated);
        let Some(Input::Peer { from, bytes }) = inputs.try_recv() else {
            panic!("the whole frame reaches the node as a validator's");
        };
        assert_eq!((from, bytes), (key(), b"vote".to_vec()));
        assert!(inputs.try_recv().is_none(), "the cut frame does not");
        assert_eq!(driver.metrics().rejected("truncated_frame"), 1);
    }

    #[test]
    fn a_client_has_a_queue_while_served_and_a_frame_above_a_request_ends_it() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let router = router();
        // 17 bytes would do for a validator, not for a client.
        let reader = Chunks::new([
            encode(b"status", 64).unwrap(),
            encode(&[0; 17], 64).unwrap(),
        ]);
        let end = block_on(serve(
            key(),
            Role::Client,
            reader,
            Writes::default(),
            &driver,
            &router,
            &limits(),
            &never(),
        ));
        assert_eq!(end, StreamEnd::Oversized);
        assert!(matches!(inputs.try_recv(), Some(Input::Client { .. })));
        assert_eq!(driver.metrics().rejected("oversized_frame"), 1);
        assert_eq!(
            router.metrics().clients_connected.get(),
            0,
            "its queue closed with the connection"
        );
    }

    #[test]
    fn a_connection_that_sends_nothing_is_closed_as_idle() {
        for role in [Role::Client, Role::Validator] {
            let (driver, _inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
            let router = router();
            let timer = TestTimer::default();
            let end = block_on(serve(
                key(),
                role,
                Silent,
                Writes::default(),
                &driver,
                &router,
                &limits(),
                &timer,
            ));
            assert_eq!(end, StreamEnd::Idle, "{role:?}");
            assert_eq!(driver.metrics().rejected("idle_connection"), 1);
            let slept = timer.slept.lock().unwrap();
            assert_eq!(slept.len(), 1);
            assert!(slept[0] <= Duration::from_secs(30) && slept[0] > Duration::from_secs(29));
            assert_eq!(router.metrics().clients_connected.get(), 0);
        }
    }

    #[test]
    fn a_client_sending_faster_than_its_rate_waits_and_loses_nothing() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let request = |i: u32| ClientFrame::Message(i.to_be_bytes().to_vec()).encode();
        let claim = ClientFrame::Relay {
            client: key(),
            signature: pbft_core::Signature([1; 64]),
        }
        .encode();
        let mut frames: Vec<u8> = (0..3000u32)
            .flat_map(|i| encode(&request(i), 160).unwrap())
            .collect();
        frames.extend((0..50).flat_map(|_| encode(&claim, 160).unwrap()));
        let mut limits = limits();
        limits.client_frame = 160;
        let timer = TestTimer::default();
        let end = block_on(serve(
            key(),
            Role::Client,
            Chunks::new([frames]),
            Writes::default(),
            &driver,
            &router(),
            &limits,
            &timer,
        ));
        assert_eq!(end, StreamEnd::Closed);
        let mut delivered = 0u32;
        while let Some(Input::Client { bytes, .. }) = inputs.try_recv() {
            if delivered < 3000 {
                assert_eq!(bytes, request(delivered), "in order");
            }
            delivered += 1;
        }
        assert_eq!(delivered, 3050, "every frame reached the node");
        // A tenth of a second's requests went at once; the other 2,900 waited their turn:
        // about 2.9 s (the test's clock runs, so a little less). The 50 claims then paid
        // their own, slower rate: 4 at once, then 46 at 10 a second.
        let slept = timer.slept.lock().unwrap();
        let (requests, claims) = slept.split_at(slept.len() - 46);
        assert!(requests.len() >= 2500, "{} waits", requests.len());
        let last = *requests.last().unwrap();
        assert!(last > Duration::from_millis(2500), "{last:?}");
        assert!(
            claims.last().unwrap() > &Duration::from_secs(4),
            "{claims:?}"
        );
    }

    #[test]
    fn a_token_bucket_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let mut pace = Pace::new(10, 20);
        pace.last = start;
        assert_eq!(
            pace.take(start),
            Duration::ZERO,
            "a tenth of the burst to start"
        );
        assert_eq!(pace.take(start), Duration::ZERO);
        assert_eq!(pace.take(start), Duration::from_millis(100));
        // A long quiet time refills the burst, not more.
        let later = start + Duration::from_secs(60);
        for _ in 0..20 {
            assert_eq!(pace.take(later), Duration::ZERO);
        }
        assert!(pace.take(later) > Duration::ZERO);
    }

    /// A sending half whose writes never complete: the other side does not read.
    struct Stuck;

    impl WriteHalf for Stuck {
        async fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
            std::future::pending().await
        }
    }

    #[test]
    fn a_client_that_takes_nothing_written_to_it_is_closed_and_gives_its_bytes_back() {
        let (driver, _inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let router = router();
        let timer = TestTimer {
            longest: Some(Duration::from_secs(60)),
            ..TestTimer::default()
        };
        // The node has a reply for the client as soon as it connects.
        let reply = ServerFrame::Message(vec![0; 1000]);
        let limits = ServeLimits {
            client_idle: Duration::from_secs(3600),
            ..limits()
        };
        let serving = serve(
            key(),
            Role::Client,
            Silent,
            Stuck,
            &driver,
            &router,
            &limits,
            &timer,
        );
        let sending = async {
            router.to_client(&key(), &reply);
            router.to_client(&key(), &reply);
            std::future::pending::<StreamEnd>().await
        };
        let end = block_on(first(serving, sending));
        assert_eq!(end, StreamEnd::Stalled);
        assert_eq!(driver.metrics().rejected("stalled_connection"), 1);
        assert_eq!(router.metrics().clients_connected.get(), 0);
    }

    #[test]
    fn empty_frames_keep_a_connection_alive_and_reach_no_one() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let stream = [encode(b"", 64).unwrap(), encode(b"", 64).unwrap()].concat();
        for role in [Role::Validator, Role::Client] {
            let end = block_on(serve(
                key(),
                role,
                Chunks::new([stream.clone()]),
                Writes::default(),
                &driver,
                &router(),
                &limits(),
                &never(),
            ));
            assert_eq!(end, StreamEnd::Closed);
        }
        assert!(inputs.try_recv().is_none());
    }
}
