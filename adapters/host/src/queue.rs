//! Frame queues bounded in frames and in bytes: what the node sends to one validator or one
//! client waits here for the transport's writer.
//!
//! A bound in frames alone is not a bound in memory: 4,096 frames of up to 4 MiB each are
//! 16 GiB. Each queue therefore also has a byte budget of its own, and may draw on a budget
//! shared by a class of queues (every client's together), so that many connections that each
//! stay under their own bound still cannot add up past what the node can hold. A frame that
//! does not fit is refused at once (the caller drops and counts it): these queues never
//! make the node's thread wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes a group of queues may hold together.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The queue holds as many frames as it may.
    #[error("the queue holds as many frames as it may")]
    Frames,
    /// The frame does not fit in the queue's byte budget, or in the budget it shares.
    #[error("the queue holds as many bytes as it may")]
    Bytes,
    /// The receiving side is gone.
    #[error("the queue is closed")]
    Closed,
}

/// The budgets one queue's frames count against.
#[derive(Debug)]
struct Budgets {
    own: Budget,
    shared: Option<Arc<Budget>>,
}

impl Budgets {
    fn take(&self, bytes: usize) -> bool {
        if !self.own.take(bytes) {
            return false;
        }
        match &self.shared {
            Some(shared) if !shared.take(bytes) => {
                self.own.give_back(bytes);
                false
            }
            _ => true,
        }
    }

    fn give_back(&self, bytes: usize) {
        self.own.give_back(bytes);
        if let Some(shared) = &self.shared {
            shared.give_back(bytes);
        }
    }
}

/// A queue of at most `frames` frames and `bytes` bytes, whose bytes also count against
/// `shared` if given.
pub fn bounded(frames: usize, bytes: usize, shared: Option<Arc<Budget>>) -> (Sender, Frames) {
    let (tx, rx) = async_channel::bounded(frames);
    let budgets = Arc::new(Budgets {
        own: Budget {
            used: AtomicUsize::new(0),
            max: bytes,
        },
        shared,
    });
    (
        Sender {
            tx,
            budgets: budgets.clone(),
        },
        Frames { rx, budgets },
    )
}

/// The sending side of a queue.
#[derive(Clone, Debug)]
pub struct Sender {
    tx: async_channel::Sender<Vec<u8>>,
    budgets: Arc<Budgets>,
}

impl Sender {
    /// Queues `frame`, or says why it cannot.
    pub fn try_send(&self, frame: Vec<u8>) -> Result<(), Full> {
        let len = frame.len();
        if !self.budgets.take(len) {
            return Err(Full::Bytes);
        }
        self.tx.try_send(frame).map_err(|err| {
            self.budgets.give_back(len);
            match err {
                async_channel::TrySendError::Full(_) => Full::Frames,
                async_channel::TrySendError::Closed(_) => Full::Closed,
            }
        })
    }

    /// Closes the queue: the receiver takes what is queued, then sees the end.
    pub fn close(&self) {
        self.tx.close();
    }
}

/// The receiving side of a queue: the frames one writer sends. Dropping it gives back the
/// bytes of whatever was still queued.
#[derive(Debug)]
pub struct Frames {
    rx: async_channel::Receiver<Vec<u8>>,
    budgets: Arc<Budgets>,
}

impl Frames {
    fn taken(&self, frame: Vec<u8>) -> Vec<u8> {
        self.budgets.give_back(frame.len());
        frame
    }

    /// The next frame; `None` once the queue is closed and empty.
    pub async fn recv(&self) -> Option<Vec<u8>> {
        let frame = self.rx.recv().await.ok()?;
        Some(self.taken(frame))
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        let frame = self.rx.try_recv().ok()?;
        Some(self.taken(frame))
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.budgets.own.used()
    }

    /// Whether every sender is gone (or closed the queue).
    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // Senders can no longer queue (the channel closes with its only receiver); what they
        // queued before counts against the shared budget until given back here.
        self.rx.close();
        while let Ok(frame) = self.rx.try_recv() {
            self.budgets.give_back(frame.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_bounded_in_frames_and_in_bytes() {
        let (tx, rx) = bounded(3, 10, None);
        assert_eq!(
            tx.try_send(vec![0; 11]),
            Err(Full::Bytes),
            "above the budget"
        );
        assert_eq!(tx.try_send(vec![0; 6]), Ok(()));
        assert_eq!(tx.try_send(vec![0; 5]), Err(Full::Bytes));
        assert_eq!(tx.try_send(vec![0; 2]), Ok(()));
        assert_eq!(tx.try_send(vec![]), Ok(()));
        assert_eq!(tx.try_send(vec![]), Err(Full::Frames));
        assert_eq!((rx.len(), rx.bytes()), (3, 8));
        assert_eq!(rx.try_recv(), Some(vec![0; 6]));
        assert_eq!(rx.bytes(), 2, "taking a frame gives its bytes back");
        assert_eq!(tx.try_send(vec![0; 8]), Ok(()));
    }

    #[test]
    fn queues_sharing_a_budget_cannot_add_up_past_it_and_a_dropped_one_gives_back() {
        let shared = Budget::new(10);
        let (a, a_rx) = bounded(8, 8, Some(shared.clone()));
        let (b, b_rx) = bounded(8, 8, Some(shared.clone()));
        assert_eq!(a.try_send(vec![0; 6]), Ok(()));
        assert_eq!(b.try_send(vec![0; 6]), Err(Full::Bytes), "the shared bound");
        assert_eq!(b.try_send(vec![0; 4]), Ok(()));
        assert_eq!(shared.used(), 10);
        drop(a_rx);
        assert_eq!(
            shared.used(),
            4,
            "a closed connection's frames are given back"
        );
        assert_eq!(a.try_send(vec![0; 1]), Err(Full::Closed));
        assert_eq!(shared.used(), 4);
        drop(b_rx);
        assert_eq!(shared.used(), 0);
    }
}
