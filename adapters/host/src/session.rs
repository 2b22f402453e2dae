//! A client's links to every validator, whatever carries them: one bounded queue of
//! [`ClientFrame`]s per validator out, one stream of [`ServerFrame`]s in. A transport fills
//! and drains the queues; clients, gateways and the bench only see this.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::queue::{self, Frames};
use crate::wire::{ClientFrame, ServerFrame};

/// Frames waiting for one validator's link, at most.
pub const LINK_QUEUE: usize = 4096;
/// Bytes waiting for one validator's link, at most.
pub const LINK_QUEUE_BYTES: usize = 64 << 20;

/// What a link does with each frame it receives; false stops the link's reading.
pub type Inbound = Box<
    dyn Fn(Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// The transport's side of a session: drain `outgoing[i]` to validator `i`, push what it
/// answers (decoded) into `inbound`.
pub struct SessionLinks {
    /// Frames to write to each validator.
    pub outgoing: Vec<Frames>,
    /// Where frames from validator `i` go, tagged with `i`.
    pub inbound: async_channel::Sender<(usize, ServerFrame)>,
    /// Whether validator `i` sent a frame that did not decode.
    unreadable: Arc<[AtomicBool]>,
}

impl SessionLinks {
    /// What the link to validator `index` does with a frame: decode it and pass it on (a
    /// frame that does not decode is dropped: a node that sends garbage is not trusted; the
    /// session notes it, [`Session::unreadable`]).
    pub fn inbound_for(&self, index: usize) -> Inbound {
        let tx = self.inbound.clone();
        let unreadable = Arc::clone(&self.unreadable);
        Box::new(move |bytes| {
            let tx = tx.clone();
            let unreadable = Arc::clone(&unreadable);
            Box::pin(async move {
                match ServerFrame::decode(&bytes) {
                    Ok(frame) => tx.send((index, frame)).await.is_ok(),
                    Err(_) => {
                        if let Some(flag) = unreadable.get(index) {
                            flag.store(true, Ordering::Relaxed);
                        }
                        true
                    }
                }
            })
        })
    }
}

/// Links from one client key to every validator.
pub struct Session {
    links: Vec<queue::Sender>,
    inbound: async_channel::Receiver<(usize, ServerFrame)>,
    unreadable: Arc<[AtomicBool]>,
    /// Whatever keeps the transport's tasks alive; dropping it stops them.
    _transport: Box<dyn Send>,
}

impl Session {
    /// The queues of a session to `validators` validators: the transport takes the
    /// [`SessionLinks`], then hands its guard to [`Session::new`] with the rest.
    pub fn channels(validators: usize) -> (SessionLinks, SessionEnds) {
        // Bounded like one link's queue per link, up to 16 links' worth: a load generator's
        // session of a link per client would otherwise reserve millions of slots.
        let inbound = LINK_QUEUE * validators.clamp(1, 16);
        let (inbound_tx, inbound_rx) = async_channel::bounded(inbound);
        let (senders, receivers) = (0..validators)
            .map(|_| queue::bounded(LINK_QUEUE, LINK_QUEUE_BYTES, None))
            .unzip();
        let unreadable: Arc<[AtomicBool]> =
            (0..validators).map(|_| AtomicBool::new(false)).collect();
        (
            SessionLinks {
                outgoing: receivers,
                inbound: inbound_tx,
                unreadable: Arc::clone(&unreadable),
            },
            SessionEnds {
                links: senders,
                inbound: inbound_rx,
                unreadable,
            },
        )
    }

    /// A session over `ends`, kept alive by `transport`.
    pub fn new(ends: SessionEnds, transport: Box<dyn Send>) -> Session {
        Session {
            links: ends.links,
            inbound: ends.inbound,
            unreadable: ends.unreadable,
            _transport: transport,
        }
    }

    /// Whether validator `validator` sent a frame this build could not decode: most likely
    /// a node of another protocol version (its frames are dropped, so it looks silent).
    pub fn unreadable(&self, validator: usize) -> bool {
        self.unreadable
            .get(validator)
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// Validators reachable.
    pub fn validators(&self) -> usize {
        self.links.len()
    }

    /// Queues a frame for one validator; false if its link's queue is full.
    pub fn send(&self, validator: usize, frame: &ClientFrame) -> bool {
        self.links
            .get(validator)
            .is_some_and(|link| link.try_send(frame.encode()).is_ok())
    }

    /// Queues a frame for every validator.
    pub fn broadcast(&self, frame: &ClientFrame) {
        let bytes = frame.encode();
        for link in &self.links {
            let _ = link.try_send(bytes.clone());
        }
    }

    /// The next frame from any validator, with the validator's index; `None` once the
    /// transport is gone.
    pub async fn recv(&mut self) -> Option<(usize, ServerFrame)> {
        self.inbound.recv().await.ok()
    }
}

/// The session's side of the queues, until [`Session::new`] takes them.
pub struct SessionEnds {
    links: Vec<queue::Sender>,
    inbound: async_channel::Receiver<(usize, ServerFrame)>,
    unreadable: Arc<[AtomicBool]>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::block_on;

    #[test]
    fn a_frame_that_does_not_decode_is_dropped_and_noted() {
        let (links, ends) = Session::channels(2);
        let session = Session::new(ends, Box::new(()));
        let inbound = links.inbound_for(1);
        // A newer build's envelope version: not a frame this build reads.
        assert!(
            block_on(inbound(vec![0xff, 1, 2, 3])),
            "the link keeps reading"
        );
        assert!(session.unreadable(1));
        assert!(!session.unreadable(0));
        assert!(session.inbound.is_empty(), "nothing reached the client");
    }
}
