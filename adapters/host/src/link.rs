//! The reconnecting link a node keeps to each peer (and a client to each validator),
//! whatever carries it: the transport dials and proves keys ([`Dial`]), the link writes its
//! queue, hands what comes back to its inbound, and reconnects with backoff.

use std::future::Future;
use std::time::Duration;

use crate::framing::{ReadHalf, WriteHalf, read_frames, write_frames};
use crate::metrics::Gauge;
use crate::queue::Frames;
use crate::race::first;
use crate::session::Inbound;

/// Wait before the first retry after a failed dial.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two dials: a peer that comes back is reached within it.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How a transport opens the connections of a [`link`].
pub trait Dial: Send {
    /// The receiving half of an open connection.
    type Reader: ReadHalf;
    /// The sending half of an open connection.
    type Writer: WriteHalf;

    /// Connects and proves both keys; `None` if that fails now (the link retries after a
    /// backoff).
    fn dial(&mut self) -> impl Future<Output = Option<(Self::Reader, Self::Writer)>> + Send;

    /// Waits `duration` on the transport's timer.
    fn pause(&self, duration: Duration) -> impl Future<Output = ()> + Send;

    /// Closes a connection the link is done with; `for_good` when the link ends with it (its
    /// queue closed), not to reconnect.
    fn hang_up(&mut self, writer: Self::Writer, for_good: bool);
}

/// Keeps a connection open through `dial`, reconnecting with backoff, and writes `queue` to
/// it; frames it sends back go to `inbound` (with none, the link only watches for the other
/// side going away). Frames queued while the link is down wait (the queue is bounded); a
/// frame in flight when a connection drops is lost, which consensus and clients retransmit.
/// `connected` counts the link while it is up. Ends when `queue` closes.
pub async fn link<D: Dial>(
    mut dial: D,
    queue: Frames,
    max: usize,
    inbound: Option<Inbound>,
    connected: Option<Gauge>,
) {
    let mut backoff = FIRST_BACKOFF;
    while !(queue.is_closed() && queue.is_empty()) {
        let Some((mut reader, mut writer)) = dial.dial().await else {
            // A link whose queue closed (its validator left the set) tries to deliver what
            // is left until its backoff reaches the longest (about 3 s of dialling); a peer
            // that is gone does not keep it dialling for good.
            if queue.is_closed() && backoff == MAX_BACKOFF {
                return;
            }
            dial.pause(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = FIRST_BACKOFF;
        if let Some(gauge) = &connected {
            gauge.inc();
        }
        let reading = async {
            match &inbound {
                Some(inbound) => {
                    read_frames(&mut reader, max, inbound).await;
                }
                // A link without inbound only writes; reading tells when the other side
                // went away.
                None => while reader.read().await.is_some() {},
            }
            true
        };
        let open = first(write_frames(&mut writer, &queue, max), reading).await;
        if let Some(gauge) = &connected {
            gauge.dec();
        }
        dial.hang_up(writer, !open);
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::encode;
    use crate::testing::{Chunks, Writes, block_on};

    /// Fails its first `failures` dials, then connects; records what the link asked of it.
    struct Flaky {
        failures: usize,
        pauses: std::sync::Mutex<Vec<Duration>>,
        hung_up: Vec<(Vec<Vec<u8>>, bool)>,
    }

    impl Dial for &mut Flaky {
        type Reader = Chunks;
        type Writer = Writes;

        async fn dial(&mut self) -> Option<(Chunks, Writes)> {
            if self.failures > 0 {
                self.failures -= 1;
                return None;
            }
            Some((Chunks::new([]), Writes::default()))
        }

        async fn pause(&self, duration: Duration) {
            self.pauses.lock().unwrap().push(duration);
        }

        fn hang_up(&mut self, writer: Writes, for_good: bool) {
            self.hung_up.push((writer.writes, for_good));
        }
    }

    #[test]
    fn a_link_backs_off_between_failed_dials_and_ends_when_its_queue_closes() {
        let mut dial = Flaky {
            failures: 3,
            pauses: Default::default(),
            hung_up: Vec::new(),
        };
        let (tx, rx) = crate::queue::bounded(4, 1024, None);
        tx.try_send(b"frame".to_vec()).unwrap();
        tx.close();
        let gauge = Gauge::default();
        block_on(link(&mut dial, rx, 64, None, Some(gauge.clone())));
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(
            *dial.pauses.lock().unwrap(),
            [ms(50), ms(100), ms(200)],
            "doubling backoff"
        );
        // Connected once: the queued frame went out, and the link hung up for good.
        assert_eq!(dial.hung_up, [(vec![encode(b"frame", 64).unwrap()], true)]);
        assert_eq!(gauge.get(), 0, "counted while up only");

        // A closed queue whose peer never answers: the link gives up at the longest backoff.
        let mut gone = Flaky {
            failures: usize::MAX,
            pauses: Default::default(),
            hung_up: Vec::new(),
        };
        let (tx, rx) = crate::queue::bounded(4, 1024, None);
        tx.try_send(b"left".to_vec()).unwrap();
        tx.close();
        block_on(link(&mut gone, rx, 64, None, None));
        let pauses = gone.pauses.lock().unwrap().clone();
        assert_eq!(pauses.len(), 6, "{pauses:?}");
        assert!(gone.hung_up.is_empty());
    }
}
