//! Repair: what brings a replica that lost messages (or was cut off) back in step.
//!
//! A replica that stops making progress broadcasts a [`Status`]; each peer answers it at most
//! once per `retransmit_ms` and only with what the status says is missing, and only to the
//! sender — so a Byzantine peer cannot make a replica send more than one window's worth per
//! interval, nor send anything to third parties. A committed batch travels with its QC, so
//! whoever sends it, it proves itself.

use alloc::vec::Vec;

use super::output::Destination;
use super::timers::Resend;
use super::{Mode, Replica};
use crate::certificate::{Committed, verify_qc};
use crate::config::ReplicaId;
use crate::error::Error;
use crate::message::{COMMITTED, HAVE_BATCH, Message, PREPARED, Status};
use crate::statement::{Phase, PrePrepare};

/// What a status shows of its sender's progress, and `own` of this replica's (view, mode,
/// stable checkpoint, last delivery), for [`super::timers::Timers::may_serve`]: either
/// changing means the service may help again (this replica may hold what it lacked before).
pub(super) fn status_fingerprint(status: &Status, own: [u64; 4]) -> u64 {
    let head = [
        status.epoch,
        status.view,
        u64::from(status.normal),
        status.stable,
        status.executed,
    ];
    let slots = status.slots.iter().map(|&flags| u64::from(flags));
    super::timers::fingerprint(head.into_iter().chain(own).chain(slots))
}

impl Replica {
    /// This replica's progress as [`status_fingerprint`] takes it.
    pub(super) fn progress_shown(&self) -> [u64; 4] {
        [
            self.view,
            u64::from(self.mode == Mode::Normal),
            self.checkpoints.stable().seq,
            self.last_delivered,
        ]
    }

    /// Whether anything waits on the network: a view change, a watched request, an
    /// undelivered slot, a stable checkpoint above what it delivered (it is behind: ask now,
    /// not at the next heartbeat), a checkpoint of its own not yet stable, or requests the
    /// primary cannot propose yet.
    pub(super) fn has_work(&self) -> bool {
        self.mode != Mode::Normal
            || self.transfer.is_some()
            || self.checkpoints.stable().seq > self.last_delivered
            || self.intake.watched_len() > 0
            || self.log.range(self.last_delivered + 1..).next().is_some()
            || self.checkpoints.awaits(self.id)
            || (self.is_primary() && self.intake.pending_len() > 0)
            || self.evidence.deadline().is_some()
            || self.awaits_boundary()
    }

    /// When to send the next status (see [`super::timers::Timers::status_deadline`]).
    pub(super) fn status_deadline(&self) -> Option<u64> {
        self.timers.status_deadline(self.has_work())
    }

    /// Tells every peer what this replica has, so they send what it lacks.
    pub(super) fn send_status(&mut self) {
        self.timers.status_sent();
        self.metrics.status_sent += 1;
        let bytes = Message::Status(self.status()).encode();
        // While a change is scheduled, the validators the next epoch adds too: one that
        // entered it already holds the change this replica may lack.
        for key in self.newcomers() {
            self.send(Destination::Outside(key), bytes.clone());
        }
        self.send(Destination::AllValidators, bytes);
    }

    pub(super) fn status(&self) -> Status {
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
            epoch: self.validators.epoch(),
            view: self.view,
            normal: self.mode == Mode::Normal,
            stable: self.checkpoints.stable().seq,
            executed: self.executed,
            slots,
        }
    }

    /// Sends the peer each committed batch after its executed seq up to `last` that its status
    /// does not flag as committed.
    pub(super) fn send_committed(&mut self, to: &Destination, status: &Status, last: u64) {
        let first = status.executed.saturating_add(1);
        for seq in first..=last {
            let index = seq.saturating_sub(first);
            let flags = usize::try_from(index)
                .ok()
                .and_then(|index| status.slots.get(index).copied())
                .unwrap_or(0);
            if flags & COMMITTED != 0 {
                continue;
            }
            if let Some(committed) = self.committed_at(seq) {
                self.metrics.retransmitted += 1;
                self.send(to.clone(), Message::Committed(committed).encode());
            }
        }
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
        let shown = status_fingerprint(&status, self.progress_shown());
        if status.epoch != self.validators.epoch() {
            // Views, seqs and checkpoints of another epoch say nothing here: a peer an epoch
            // behind gets the changes it missed, one ahead gets our status to answer with them.
            if !self.timers.may_serve(peer, shown) {
                return Err(Error::RateLimited);
            }
            self.send_epoch_changes(Destination::Validator(peer), &status);
            return Ok(());
        }
        let peer_ahead = status.executed > self.executed
            || status.stable > self.checkpoints.stable().seq
            || status.view > self.view;
        let peer_behind = status.executed < self.last_delivered
            || status.stable < self.checkpoints.stable().seq
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
        if !self.timers.may_serve(peer, shown) {
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
                let held = self
                    .view_changes
                    .get(&self.id)
                    .map(|held| held.change.clone());
                if let Some(change) = held
                    && self
                        .timers
                        .may_resend(peer, Resend::ViewChange, change.view)
                {
                    let bytes = Message::ViewChange(change).encode();
                    self.metrics.retransmitted += 1;
                    self.send(to.clone(), bytes);
                }
            }
            _ => {}
        }
        if self.checkpoints.stable().seq > status.stable {
            let bytes = Message::Checkpoint(self.checkpoints.stable().clone()).encode();
            self.metrics.retransmitted += 1;
            self.send(to.clone(), bytes);
        }
        let own_checkpoints = self.checkpoints.own_votes_above(status.stable, self.id);
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
        let last = self
            .last_delivered
            .min(status.executed.saturating_add(window));
        self.send_committed(&Destination::Validator(peer), status, last);
        let flags_at = |seq: u64| {
            let index = seq.saturating_sub(status.executed.saturating_add(1));
            usize::try_from(index)
                .ok()
                .and_then(|index| status.slots.get(index).copied())
                .unwrap_or(0)
        };
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
        // The digest covers requests, not their signatures or attestations: a copy padded by
        // its sender is refused, never kept or served (a null batch is empty).
        if !batch.is_empty() {
            // Under the gateways of the epoch that ordered it (one may have left since).
            self.check_batch_limits_in(&batch, certificate.epoch)?;
        }
        let leaves = batch.leaves(&self.config.chain_id);
        if crate::merkle::root(&leaves) != certificate.digest {
            return Err(Error::BatchDigestMismatch);
        }
        let signatures = certificate.signatures.len() as u64;
        self.metrics.signatures_verified += signatures;
        self.metrics.signatures_batch_verified += signatures;
        // At or below the epoch's start, a batch the previous epoch committed (a replica
        // restored behind the boundary executes it again).
        let earlier;
        let set = match seq <= self.validators.base().0 {
            // Only an earlier epoch certifies a seq at or below this one's start.
            true if certificate.epoch < self.validators.epoch() => {
                earlier = self.set_of_epoch(certificate.epoch)?;
                // And within that epoch's seqs: after its start, at most its boundary.
                let ended_at = self.epoch_boundary(certificate.epoch);
                if seq <= earlier.base().0 || ended_at.is_none_or(|end| seq > end) {
                    return Err(Error::OtherEpoch {
                        got: certificate.epoch,
                        current: self.validators.epoch(),
                    });
                }
                &earlier
            }
            true => {
                return Err(Error::OtherEpoch {
                    got: certificate.epoch,
                    current: self.validators.epoch(),
                });
            }
            false => &self.validators,
        };
        verify_qc(&self.config.chain_id, set, &certificate)?;
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
            self.intake.release(leaf);
        }
        self.intake.track_all(&leaves);
        if slot.digest != Some(certificate.digest) {
            // No record holds this batch yet.
            slot.batch_logged = false;
        }
        // A batch held for this digest stays: request digests leave client signatures out, so
        // a peer's copy may carry others (junk ones) under the same QC. A held batch that came
        // in a pre-prepare had its signatures checked here; one taken by digest was not, and
        // the peer's copy is no better. This replica relays and serves the batch it holds.
        if slot.digest != Some(certificate.digest) || slot.batch.is_none() {
            slot.batch = Some(batch);
        }
        slot.digest = Some(certificate.digest);
        slot.leaves = leaves;
        slot.certificate = Some(certificate);
        self.deliver_ready();
        Ok(())
    }
}
