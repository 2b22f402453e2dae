//! Serves a connection a transport accepted and admitted, whatever carries it: a
//! validator's frames go to the node; a client's too, and the node's frames for that client
//! go back on the same connection.
//!
//! What a connection may cost is bounded here, the same for every transport: a client's
//! frames are at most the largest request ([`crate::wire::max_client_frame`]), arrive at
//! most [`CLIENT_FRAMES_PER_SECOND`] a second (beyond that the connection is not read until
//! its budget refills: nothing is lost, it only waits), and a connection that sends nothing
//! for its idle time is closed (validators send a status every heartbeat, so only a dead or
//! hostile one is ever idle).

use std::future::Future;
use std::time::{Duration, Instant};

use pbft_core::{Config, PublicKey};

use crate::driver::{Driver, Input, Role, Router};
use crate::framing::{ReadHalf, StreamEnd, WriteHalf, read_frames, write_frames};
use crate::race::first;

/// Frames a client connection may send per second, sustained (a gateway's connection
/// carries many clients' requests, so this is generous: it bounds what one connection can
/// take from the node's thread, not what a client needs).
pub const CLIENT_FRAMES_PER_SECOND: u32 = 20_000;
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
    /// Frames a client connection may send per second, sustained; also the burst.
    pub client_frames_per_second: u32,
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
        }
    }
}

/// A token bucket: a frame costs one token, tokens refill at `rate` a second up to `rate`.
/// A frame beyond them runs a debt, and the reader waits until it is paid.
#[derive(Debug)]
struct Pace {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Pace {
    fn new(rate: u32) -> Pace {
        let rate = f64::from(rate.max(1));
        Pace {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; how long to wait before the frame goes on.
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate) - 1.0;
        match self.tokens >= 0.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64(-self.tokens / self.rate),
        }
    }
}

/// A receiving half that ends (as if closed) after `idle` without bytes, and says so.
struct Watched<'a, R, T> {
    inner: R,
    timer: &'a T,
    idle: Duration,
    idled: bool,
}

impl<R: ReadHalf, T: Timer> ReadHalf for Watched<'_, R, T> {
    async fn read(&mut self) -> Option<&[u8]> {
        let (inner, timer, idle, idled) = (&mut self.inner, self.timer, self.idle, &mut self.idled);
        let timeout = async {
            timer.sleep(idle).await;
            *idled = true;
            None
        };
        first(inner.read(), timeout).await
    }
}

/// Serves one admitted connection (or QUIC stream) of `key` in `role` until it ends, and
/// says how: a transport that can tell the other side why closes an
/// [`StreamEnd::Oversized`] or [`StreamEnd::Idle`] connection with a reason. Broken framing
/// and idleness are counted here (`truncated_frame`, `oversized_frame`, `idle_connection`).
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
    let mut reader = Watched {
        inner: reader,
        timer,
        idle,
        idled: false,
    };
    let end = match role {
        Role::Validator => {
            read_frames(&mut reader, limits.frame, |bytes| {
                driver.input(Input::Peer { from: key, bytes })
            })
            .await
        }
        Role::Client => {
            let queue = router.attach_client(key);
            let connection = queue.connection;
            let mut pace = Pace::new(limits.client_frames_per_second);
            let reading = read_frames(&mut reader, limits.client_frame, |bytes| {
                let wait = pace.take(Instant::now());
                async move {
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
                write_frames(&mut writer, &queue.frames, limits.frame).await;
                StreamEnd::Closed
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
    }
    end
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pbft_core::{Keypair, ReplicaId, ValidatorSet};

    use super::*;
    use crate::framing::encode;
    use crate::metrics::NodeMetrics;
    use crate::testing::{Chunks, Silent, TestTimer, Writes, block_on};

    fn key() -> PublicKey {
        Keypair::from_seed(&[3; 32]).public_key()
    }

    fn router() -> Arc<Router> {
        let set = ValidatorSet::new(0, &[key()]).unwrap();
        Router::new(&set, ReplicaId(0), 1 << 20, Arc::new(NodeMetrics::new())).0
    }

    fn limits() -> ServeLimits {
        ServeLimits {
            frame: 64,
            client_frame: 16,
            client_idle: Duration::from_secs(30),
            validator_idle: Duration::from_secs(30),
            client_frames_per_second: 1000,
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
            assert_eq!(*timer.slept.lock().unwrap(), [Duration::from_secs(30)]);
            assert_eq!(router.metrics().clients_connected.get(), 0);
        }
    }

    #[test]
    fn a_client_sending_faster_than_its_rate_waits_and_loses_nothing() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let frames: Vec<u8> = (0..3000u32)
            .flat_map(|i| encode(&i.to_be_bytes(), 16).unwrap())
            .collect();
        let timer = TestTimer::default();
        let end = block_on(serve(
            key(),
            Role::Client,
            Chunks::new([frames]),
            Writes::default(),
            &driver,
            &router(),
            &limits(),
            &timer,
        ));
        assert_eq!(end, StreamEnd::Closed);
        let mut delivered = 0u32;
        while let Some(Input::Client { bytes, .. }) = inputs.try_recv() {
            assert_eq!(bytes, delivered.to_be_bytes(), "in order");
            delivered += 1;
        }
        assert_eq!(delivered, 3000, "every frame reached the node");
        // The first second's 1,000 went at once; the other 2,000 waited their turn: about
        // 2 s in all (the test's clock runs, so a little less).
        let slept = timer.slept.lock().unwrap();
        assert!(slept.len() >= 1500, "{} waits", slept.len());
        let last = *slept.last().unwrap();
        assert!(last > Duration::from_millis(1500), "{last:?}");
    }

    #[test]
    fn a_token_bucket_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let mut pace = Pace::new(10);
        pace.last = start;
        for _ in 0..10 {
            assert_eq!(pace.take(start), Duration::ZERO);
        }
        assert_eq!(pace.take(start), Duration::from_millis(100));
        // A long quiet time refills the burst, not more.
        let later = start + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(pace.take(later), Duration::ZERO);
        }
        assert!(pace.take(later) > Duration::ZERO);
    }
}
