//! Checkpoints and repair: what lets the log be freed, and what brings a replica that lost
//! messages (or was cut off) back in step.
//!
//! Every `checkpoint_interval` seqs each replica signs the digest of its state there; a quorum
//! of matching signatures makes the checkpoint stable and moves the low watermark there. A
//! replica that stops making progress broadcasts a [`Status`]; each peer answers it at most
//! once per `retransmit_ms` and only with what the status says is missing, and only to the
//! sender — so a Byzantine peer cannot make a replica send more than one window's worth per
//! interval, nor send anything to third parties.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{Destination, Mode, Output, Record, Replica};
use crate::certificate::{Evidence, verify_qc};
use crate::config::ReplicaId;
use crate::crypto::Digest;
use crate::error::Error;
use crate::message::{
    COMMITTED, Committed, HAVE_BATCH, Message, PREPARED, Phase, PrePrepare, Status, Vote,
};
use crate::view_change::{StableCheckpoint, verify_checkpoint};

impl Replica {
    /// Signs, persists and broadcasts this replica's checkpoint at `seq` (just executed) over
    /// the digest of its state there.
    pub(super) fn checkpoint(&mut self, seq: u64, state: Digest) {
        if seq <= self.stable.seq {
            return;
        }
        self.own_checkpoints.insert(seq, state);
        let Some(vote) = self.sign(Phase::Checkpoint, (0, seq), state) else {
            // Before a restart this replica reached another state at `seq`.
            return;
        };
        self.publish(Record::Signed(vote.clone()), &Message::Vote(vote.clone()));
        self.checkpoint_votes
            .entry(seq)
            .or_default()
            .insert(self.id, vote);
        self.check_stable(seq);
    }

    pub(super) fn on_checkpoint_vote(&mut self, vote: Vote) -> Result<(), Error> {
        let seq = vote.seq;
        if vote.view != 0 || !seq.is_multiple_of(self.config.checkpoint_interval) {
            return Err(Error::UnexpectedMessage("checkpoint off the interval"));
        }
        if seq <= self.stable.seq {
            return Err(Error::Duplicate);
        }
        let high = self.low + 2 * self.config.window;
        if seq > high {
            return Err(Error::OutOfWindow {
                seq,
                low: self.stable.seq + 1,
                high,
            });
        }
        let known = self
            .checkpoint_votes
            .get(&seq)
            .and_then(|votes| votes.get(&vote.replica));
        if known.is_some_and(|known| known.digest == vote.digest) {
            return Err(Error::Duplicate);
        }
        if self.checkpoint_reported.contains(&(seq, vote.replica)) {
            // Already proven against it here: a repeat costs no check and no second report.
            return Err(Error::Equivocation(vote.replica));
        }
        let key = *self
            .validators
            .key(vote.replica)
            .ok_or(Error::NotAValidator)?;
        self.metrics.signatures_verified += 1;
        key.verify(
            &vote.signed_digest(&self.config.chain_id, self.validators.epoch()),
            &vote.signature,
        )?;
        if let Some(first) = known.cloned() {
            // Two states signed for one seq: evidence, reported once; the first vote stays.
            let culprit = vote.replica;
            self.checkpoint_reported.insert((seq, culprit));
            self.metrics.evidence_reported += 1;
            self.outputs.push_back(Output::Evidence(Evidence {
                epoch: self.validators.epoch(),
                first,
                second: vote,
            }));
            return Err(Error::Equivocation(culprit));
        }
        self.checkpoint_votes
            .entry(seq)
            .or_default()
            .insert(vote.replica, vote);
        self.check_stable(seq);
        Ok(())
    }

    /// Makes the checkpoint at `seq` stable if a quorum signed one digest.
    fn check_stable(&mut self, seq: u64) {
        let quorum = self.validators.quorum();
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut by_digest: BTreeMap<_, Vec<&Vote>> = BTreeMap::new();
        for vote in votes.values() {
            by_digest.entry(vote.digest).or_default().push(vote);
        }
        let Some((digest, signers)) = by_digest.into_iter().find(|(_, v)| v.len() >= quorum) else {
            return;
        };
        let signatures = signers
            .iter()
            .take(quorum)
            .map(|vote| (vote.replica, vote.signature))
            .collect();
        self.metrics.checkpoints_stable += 1;
        self.adopt_checkpoint(StableCheckpoint {
            seq,
            digest,
            signatures,
        });
    }

    pub(super) fn on_stable_checkpoint(
        &mut self,
        checkpoint: StableCheckpoint,
    ) -> Result<(), Error> {
        if checkpoint.seq <= self.stable.seq {
            return Err(Error::Duplicate);
        }
        self.metrics.signatures_verified += checkpoint.signatures.len() as u64;
        self.metrics.signatures_batch_verified += checkpoint.signatures.len() as u64;
        verify_checkpoint(&self.config.chain_id, &self.validators, &checkpoint)?;
        self.adopt_checkpoint(checkpoint);
        Ok(())
    }

    /// Takes a verified stable checkpoint if it is newer than the one held, and moves the
    /// window.
    pub(super) fn adopt_checkpoint(&mut self, checkpoint: StableCheckpoint) {
        self.take_checkpoint(checkpoint);
        self.update_low();
        self.maybe_start_transfer();
    }

    /// Takes a verified stable checkpoint if it is newer, without moving the window yet.
    pub(super) fn take_checkpoint(&mut self, checkpoint: StableCheckpoint) {
        if checkpoint.seq <= self.stable.seq {
            return;
        }
        self.outputs
            .push_back(Output::Persist(Record::Stable(checkpoint.clone())));
        self.stable = checkpoint;
        let stable = self.stable.seq;
        self.checkpoint_votes.retain(|&seq, _| seq > stable);
        self.checkpoint_reported.retain(|&(seq, _)| seq > stable);
    }

    /// Moves the low watermark to the stable checkpoint (or to the executed seq while this
    /// replica is still catching up to it) and frees what lies below: slots go to the archive
    /// of committed batches, which keeps the newest `retained_batches`.
    pub(super) fn update_low(&mut self) {
        let now = self.now;
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.target_seq() <= self.executed)
        {
            // Caught up by replaying batches after all.
            self.transfer = None;
        }
        let target = self.executed.min(self.stable.seq);
        if target <= self.low {
            return;
        }
        if self.executed >= self.stable.seq
            && self
                .own_checkpoints
                .get(&self.stable.seq)
                .is_some_and(|own| *own != self.stable.digest)
        {
            // A quorum reached another state than this replica did: its execution is not
            // deterministic, or its storage is corrupt. The quorum's checkpoint stands.
            self.metrics.checkpoint_mismatches += 1;
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
        self.own_checkpoints.retain(|&seq, _| seq > target);
        // Keep the stable checkpoint's state (peers may fetch it) and those above it.
        let stable = self.stable.seq;
        self.snapshots.retain(|&seq, _| seq >= stable);
        self.signed.retain(|&(_, _, seq), _| seq > target);
        self.low = target;
        self.replay_ahead(now);
        if self.is_primary() && !self.pending.is_empty() {
            self.propose(now, false);
        }
    }

    /// Whether anything waits on the network: a view change, a watched request, an
    /// undelivered slot, a checkpoint of its own not yet stable, or requests the primary
    /// cannot propose yet.
    pub(super) fn has_work(&self) -> bool {
        self.mode != Mode::Normal
            || self.transfer.is_some()
            || !self.watched.is_empty()
            || self.log.range(self.last_delivered + 1..).next().is_some()
            || self
                .checkpoint_votes
                .values()
                .any(|votes| votes.contains_key(&self.id))
            || (self.is_primary() && !self.pending.is_empty())
    }

    /// When to send the next status: a retransmit interval after the last progress (or the
    /// last status) while work waits, a heartbeat interval after the last status otherwise.
    pub(super) fn status_deadline(&self) -> Option<u64> {
        let last = self.last_status?;
        Some(match self.has_work() {
            true => last
                .max(self.progress_at)
                .saturating_add(self.config.retransmit_ms),
            false => last.saturating_add(self.config.heartbeat_ms),
        })
    }

    /// Tells every peer what this replica has, so they send what it lacks.
    pub(super) fn send_status(&mut self) {
        self.last_status = Some(self.now);
        self.metrics.status_sent += 1;
        let bytes = Message::Status(self.status()).encode();
        self.send(Destination::AllValidators, bytes);
    }

    fn status(&self) -> Status {
        let from = self.executed + 1;
        let to = self.executed + self.config.window;
        let mut slots: Vec<u8> = (from..=to)
            .map(|seq| {
                self.log
                    .get(&seq)
                    .map_or(0, |slot| slot.flags(self.validators.quorum()))
            })
            .collect();
        while slots.last() == Some(&0) {
            slots.pop();
        }
        Status {
            view: self.view,
            normal: self.mode == Mode::Normal,
            stable: self.stable.seq,
            executed: self.executed,
            slots,
        }
    }

    /// Whether `peer` may be served retransmissions now; if so, starts its interval.
    pub(super) fn may_serve(&mut self, peer: ReplicaId) -> bool {
        let interval = self.config.retransmit_ms;
        if self
            .served
            .get(&peer)
            .is_some_and(|&at| self.now < at.saturating_add(interval))
        {
            return false;
        }
        self.served.insert(peer, self.now);
        true
    }

    /// Answers a peer's status with what it lacks, to that peer only, once per interval.
    pub(super) fn on_status(&mut self, peer: ReplicaId, status: Status) -> Result<(), Error> {
        let window = self.config.window;
        if status.slots.len() as u64 > window {
            return Err(Error::UnexpectedMessage("status longer than the window"));
        }
        if peer == self.id {
            return Err(Error::UnexpectedMessage(
                "status from this replica's own key",
            ));
        }
        let peer_ahead = status.executed > self.executed
            || status.stable > self.stable.seq
            || status.view > self.view;
        let peer_behind = status.executed < self.last_delivered
            || status.stable < self.stable.seq
            || status.view < self.view
            || !status.normal
            || self
                .log
                .range(status.executed.saturating_add(1)..)
                .next()
                .is_some();
        if !peer_behind && !peer_ahead {
            return Ok(());
        }
        if !self.may_serve(peer) {
            return Err(Error::RateLimited);
        }
        let to = Destination::Validator(peer);
        if peer_ahead {
            // Pull: our status makes the peer send what we lack.
            let bytes = Message::Status(self.status()).encode();
            self.send(to.clone(), bytes);
        }
        match self.mode {
            Mode::Normal
                if status.view < self.view || (status.view == self.view && !status.normal) =>
            {
                self.send_new_view_to(peer);
            }
            Mode::ViewChange { .. } if status.view <= self.view => {
                if let Some(change) = self.view_changes.get(&self.id) {
                    let bytes = Message::ViewChange(change.clone()).encode();
                    self.metrics.retransmitted += 1;
                    self.send(to.clone(), bytes);
                }
            }
            _ => {}
        }
        if self.stable.seq > status.stable {
            let bytes = Message::Checkpoint(self.stable.clone()).encode();
            self.metrics.retransmitted += 1;
            self.send(to.clone(), bytes);
        }
        let own_checkpoints: Vec<Vote> = self
            .checkpoint_votes
            .range(status.stable.saturating_add(1)..)
            .filter_map(|(_, votes)| votes.get(&self.id).cloned())
            .collect();
        for vote in own_checkpoints {
            self.metrics.retransmitted += 1;
            self.send(to.clone(), Message::Vote(vote).encode());
        }
        self.send_missing(peer, &status);
        Ok(())
    }

    /// Committed batches the peer has not executed, then, in a shared view, this replica's
    /// own messages for the slots the peer has not committed — at most a window of each.
    fn send_missing(&mut self, peer: ReplicaId, status: &Status) {
        let to = Destination::Validator(peer);
        let window = self.config.window;
        let flags_at = |seq: u64| {
            let index = seq.saturating_sub(status.executed.saturating_add(1));
            usize::try_from(index)
                .ok()
                .and_then(|index| status.slots.get(index).copied())
                .unwrap_or(0)
        };
        let first = status.executed.saturating_add(1);
        let last = self
            .last_delivered
            .min(status.executed.saturating_add(window));
        for seq in first..=last {
            if flags_at(seq) & COMMITTED != 0 {
                continue;
            }
            if let Some(committed) = self.committed_at(seq) {
                self.metrics.retransmitted += 1;
                self.send(to.clone(), Message::Committed(committed).encode());
            }
        }
        let shared_view = self.mode == Mode::Normal && status.normal && status.view == self.view;
        if !shared_view {
            return;
        }
        let mut messages = Vec::new();
        let start = self.last_delivered.max(status.executed).saturating_add(1);
        let end = status.executed.saturating_add(window);
        if start > end {
            return;
        }
        for (&seq, slot) in self.log.range(start..=end) {
            let flags = flags_at(seq);
            if flags & COMMITTED != 0 {
                continue;
            }
            let current = slot.proposal.as_ref().filter(|p| p.view == self.view);
            if flags & HAVE_BATCH == 0
                && let (Some(proposal), Some(batch)) = (current, slot.batch.as_ref())
            {
                messages.push(Message::PrePrepare(PrePrepare {
                    vote: proposal.clone(),
                    batch: batch.clone(),
                }));
            }
            if flags & PREPARED == 0
                && let Some(vote) = slot.own(Phase::Prepare, self.id)
            {
                messages.push(Message::Vote(vote.clone()));
            }
            if let Some(vote) = slot.own(Phase::Commit, self.id) {
                messages.push(Message::Vote(vote.clone()));
            }
        }
        for message in messages {
            self.metrics.retransmitted += 1;
            self.send(to.clone(), message.encode());
        }
    }

    /// The committed batch at `seq`, from the log or the archive.
    fn committed_at(&self, seq: u64) -> Option<Committed> {
        if let Some(slot) = self.log.get(&seq) {
            return match (&slot.batch, &slot.certificate) {
                (Some(batch), Some(certificate)) => Some(Committed {
                    batch: batch.clone(),
                    certificate: certificate.clone(),
                }),
                _ => None,
            };
        }
        let first = self.archive.front()?.certificate.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.archive
            .get(index)
            .filter(|committed| committed.certificate.seq == seq)
            .cloned()
    }

    /// A committed batch from a peer: its QC proves it, whoever sent it.
    pub(super) fn on_committed(&mut self, committed: Committed) -> Result<(), Error> {
        let Committed { batch, certificate } = committed;
        let seq = certificate.seq;
        if seq <= self.last_delivered
            || self
                .log
                .get(&seq)
                .is_some_and(|slot| slot.certificate.is_some() && slot.batch.is_some())
        {
            return Err(Error::Duplicate);
        }
        // Delivered slots stay until a checkpoint frees them, so catching up runs at most
        // one window past the window: the log never holds more than two windows of slots.
        let high = self.low + 2 * self.config.window;
        if seq > high {
            return Err(Error::OutOfWindow {
                seq,
                low: self.last_delivered + 1,
                high,
            });
        }
        let leaves = batch.leaves(&self.config.chain_id);
        if crate::merkle::root(&leaves) != certificate.digest {
            return Err(Error::BatchDigestMismatch);
        }
        let signatures = certificate.signatures.len() as u64;
        self.metrics.signatures_verified += signatures;
        self.metrics.signatures_batch_verified += signatures;
        verify_qc(&self.config.chain_id, &self.validators, &certificate)?;
        self.metrics.batches_caught_up += 1;
        let slot = self.log.entry(seq).or_default();
        if slot
            .proposal
            .as_ref()
            .is_some_and(|p| p.digest != certificate.digest)
        {
            // The proposal accepted here lost: nothing of it may become a prepared
            // certificate (its digest would not match the votes counted for the QC's).
            slot.repropose_committed();
        }
        for leaf in &slot.leaves {
            self.in_flight.remove(leaf);
        }
        self.in_flight.extend(leaves.iter().copied());
        slot.digest = Some(certificate.digest);
        slot.leaves = leaves;
        slot.batch = Some(batch);
        slot.certificate = Some(certificate);
        self.deliver_ready();
        Ok(())
    }
}
