//! The watermark window (Castro and Liskov, section 4.3): seqs in (low, low + window] may be
//! ordered. Consensus messages below it are refused, those above it buffered per peer (a
//! bounded number each) and replayed once the window moves; moving it frees the log below
//! into the archive of committed batches.

use alloc::vec::Vec;
use core::cmp::Ordering;

use super::Mode;
use super::Replica;
use crate::certificate::Committed;
use crate::crypto::PublicKey;
use crate::error::Error;
use crate::message::Message;

impl Replica {
    /// The high watermark: the last seq in the window, and never past the epoch's scheduled
    /// boundary ([`crate::epoch`]: no quorum of this epoch signs a slot after it).
    pub(super) fn high(&self) -> u64 {
        self.low
            .saturating_add(self.config.window)
            .min(self.epoch_end())
    }

    /// Checks view and window; buffers messages above the window.
    pub(super) fn on_consensus(&mut self, from: &PublicKey, message: Message) -> Result<(), Error> {
        let (view, seq) = match &message {
            Message::PrePrepare(pre_prepare) => (pre_prepare.vote.view, pre_prepare.vote.seq),
            Message::Vote(vote) => (vote.view, vote.seq),
            _ => return Err(Error::UnexpectedMessage(message.kind())),
        };
        let refusal = match view.cmp(&self.view) {
            Ordering::Equal if self.mode != Mode::Normal => Some(Error::ViewChanging),
            Ordering::Less => Some(Error::StaleView {
                got: view,
                current: self.view,
            }),
            _ => None,
        };
        if let Some(refusal) = refusal {
            // Not ordered here, yet maybe half of its primary's equivocation.
            return match message {
                Message::PrePrepare(p) => self.on_unaccepted_proposal(from, p.vote, refusal),
                _ => Err(refusal),
            };
        }
        if view > self.view {
            return Err(Error::FutureView {
                got: view,
                current: self.view,
            });
        }
        // Nor at or below the epoch's start: those seqs are the previous epoch's, final.
        let floor = self.low.max(self.validators.base().0);
        if seq <= floor && !planted!(self.config, AcceptBelowLowWatermark) {
            return Err(Error::OutOfWindow {
                seq,
                low: self.low + 1,
                high: self.high(),
            });
        }
        if seq > self.high() {
            let queue = self.ahead.entry(*from).or_default();
            if queue.len() >= self.config.max_future_per_peer {
                return Err(Error::FutureBufferFull);
            }
            queue.push_back(message);
            return Ok(());
        }
        match message {
            Message::PrePrepare(pre_prepare) => self.on_pre_prepare(from, pre_prepare),
            Message::Vote(vote) => self.on_vote(vote),
            _ => Err(Error::UnexpectedMessage(message.kind())),
        }
    }

    /// Moves the low watermark to the stable checkpoint (or to the executed seq while this
    /// replica is still catching up to it) and frees what lies below: slots go to the archive
    /// of committed batches, which keeps the newest `retained_batches`.
    pub(super) fn update_low(&mut self) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| !t.repairs() && t.target_seq() <= self.executed)
        {
            // Caught up by replaying batches after all.
            self.transfer = None;
        }
        // Before the own digests at or below the new low watermark are pruned.
        self.check_diverged();
        let stable = self.checkpoints.stable();
        let target = self.executed.min(stable.seq);
        if target <= self.low {
            return;
        }
        let kept = self.log.split_off(&(target + 1));
        let freed = core::mem::replace(&mut self.log, kept);
        for (_, slot) in freed {
            if let (Some(batch), Some(certificate)) = (slot.batch, slot.certificate) {
                self.archive.push_back(Committed { batch, certificate });
            }
        }
        while self.archive.len() > self.config.retained_batches {
            self.archive.pop_front();
        }
        // A state a peer still fetches stays until it could have come back for more: a
        // fetcher asks its n - 1 peers a round each in turn, one per interval, so it may
        // return only n - 1 intervals later; ten more for slow rounds.
        let passes = self.validators.len().saturating_sub(1) as u64 + 10;
        let idle = self.config.retransmit_ms.saturating_mul(passes);
        let base = self.validators.base().0;
        self.checkpoints
            .prune((target, base), self.timers.now(), idle);
        self.signer.forget_through(target);
        self.evidence.forget_refused_through(target);
        self.kept.retain(|&seq, _| seq > target);
        self.low = target;
        self.replay_ahead();
        if self.is_primary() && self.has_proposable() {
            self.propose(false);
        }
    }

    /// Replays buffered messages that the moved window now covers; drops those below it.
    fn replay_ahead(&mut self) {
        let high = self.high();
        let mut ready = Vec::new();
        for (peer, queue) in self.ahead.iter_mut() {
            queue.retain(|message| {
                let seq = match message {
                    Message::PrePrepare(p) => p.vote.seq,
                    Message::Vote(v) => v.seq,
                    _ => 0,
                };
                if seq <= high {
                    ready.push((*peer, message.clone()));
                    false
                } else {
                    true
                }
            });
        }
        self.ahead.retain(|_, queue| !queue.is_empty());
        for (peer, message) in ready {
            let result = self.on_message(&peer, message);
            // Failures are counted like any input's; the replay goes on.
            let _ = self.count(result);
        }
    }
}
