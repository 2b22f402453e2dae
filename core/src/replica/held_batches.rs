//! The batches a replica holds for later views, and how a new primary gets those it lacks.
//!
//! A new view names its re-proposals by digest, so someone honest must hold each batch it can
//! name ([`crate::view_change`], "Why a re-proposed batch can be found, and when it cannot").
//! Two rules see to it. An honest replica signs a vote of the prepare phase only while it
//! holds the batch and after the batch is logged: a backup prepares a re-proposal once the
//! batch is in
//! ([`Replica::fill_batch`]), and a new primary signs its new view once it holds every batch
//! the plan re-proposes, asking first the validators whose view changes reported one it lacks
//! and then all of them ([`FetchBatches`]), at most once per `retransmit_ms`; if none comes,
//! its view times out like any other that does not start. And it keeps the batch of its
//! latest such vote at each seq until it votes for another batch there or the seq is
//! checkpointed, also after a new view proposed something else there: an old prepared
//! certificate for that batch may still decide a later view (Castro and Liskov keep the
//! requests of the log until the checkpoint for the same reason). The case these rules leave
//! open is described there.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::output::{Destination, Record};
use super::{Mode, Replica};
use crate::config::ReplicaId;
use crate::crypto::Digest;
use crate::error::Error;
use crate::merkle;
use crate::message::{BatchAt, FetchBatches, Message};
use crate::new_view::{Plan, null_digest};
use crate::statement::{Batch, Phase, Vote};

/// What a new primary still lacks, and has fetched, for the new view it is about to sign.
#[derive(Debug)]
pub(super) struct BatchFetch {
    /// The view it is for.
    view: u64,
    /// (seq, digest) of each re-proposed batch not held yet.
    wanted: BTreeSet<(u64, Digest)>,
    /// Batches fetched, by (seq, digest): at most the plan's proposals.
    fetched: BTreeMap<(u64, Digest), Batch>,
    /// When it last asked (ms).
    asked_at: Option<u64>,
    /// How often it asked: first the reporters, then every validator.
    attempts: u32,
}

impl Replica {
    /// Whether this replica, as the primary of the view it is changing to, holds every batch
    /// `plan` re-proposes (in its log or fetched). If not, asks for the missing ones from the
    /// validators whose view changes for this view reported them (at most once per
    /// `retransmit_ms`).
    pub(super) fn holds_planned_batches(&mut self, plan: &Plan) -> bool {
        let null = null_digest(&self.config.chain_id);
        let stable = self.checkpoints.stable().seq;
        let view = self.view;
        // What was fetched for another view is of no use to this one.
        let fetch = match &mut self.batch_fetch {
            Some(fetch) if fetch.view == view => fetch,
            other => other.insert(BatchFetch {
                view,
                wanted: BTreeSet::new(),
                fetched: BTreeMap::new(),
                asked_at: None,
                attempts: 0,
            }),
        };
        // Batches at or below the stable checkpoint are final here: no vote there is ever
        // reported, so nothing needs them.
        fetch.wanted = plan
            .proposals
            .iter()
            .copied()
            .filter(|&(seq, digest)| {
                digest != null
                    && seq > stable
                    && !fetch.fetched.contains_key(&(seq, digest))
                    && !self
                        .log
                        .get(&seq)
                        .is_some_and(|slot| slot.digest == Some(digest) && slot.batch.is_some())
                    && self
                        .kept
                        .get(&seq)
                        .is_none_or(|(proposal, _)| proposal.digest != digest)
            })
            .collect();
        if fetch.wanted.is_empty() {
            return true;
        }
        let now = self.timers.now();
        if fetch
            .asked_at
            .is_some_and(|at| now < at.saturating_add(self.config.retransmit_ms))
        {
            return false;
        }
        fetch.asked_at = Some(now);
        fetch.attempts += 1;
        if fetch.attempts > 1 {
            // The reporters did not answer, or no longer hold it: a batch chosen from an old
            // prepared certificate may be held by validators that report nothing there.
            let wanted = fetch.wanted.iter().copied().collect();
            let bytes = Message::FetchBatches(FetchBatches { view, wanted }).encode();
            self.send(Destination::AllValidators, bytes);
            return false;
        }
        let mut asks: BTreeMap<ReplicaId, Vec<(u64, Digest)>> = BTreeMap::new();
        let changes = self
            .view_changes
            .values()
            .map(|held| &held.change)
            .filter(|change| change.view == view && change.replica != self.id);
        for change in changes {
            let reported = change
                .prepared
                .iter()
                .map(|p| (p.proposal.seq, p.proposal.digest))
                .chain(change.voted.iter().map(|v| (v.seq, v.digest)));
            for key in reported.filter(|key| fetch.wanted.contains(key)) {
                asks.entry(change.replica).or_default().push(key);
            }
        }
        for (peer, mut wanted) in asks {
            wanted.sort_unstable();
            wanted.dedup();
            let bytes = Message::FetchBatches(FetchBatches { view, wanted }).encode();
            self.send(Destination::Validator(peer), bytes);
        }
        false
    }

    /// Persists, before the new view that re-proposes them leaves, the batches of `proposals`
    /// that are not logged yet (fetched ones, or held without a record): after a crash this
    /// replica's pre-prepares must come back with their batches.
    pub(super) fn log_planned_batches(&mut self, proposals: &[Vote]) {
        let null = null_digest(&self.config.chain_id);
        let fetched = self.batch_fetch.as_ref().map(|fetch| &fetch.fetched);
        for proposal in proposals.iter().filter(|p| p.digest != null) {
            let key = (proposal.seq, proposal.digest);
            let batch = match self.log.get_mut(&proposal.seq) {
                Some(slot) if slot.digest == Some(proposal.digest) && slot.batch.is_some() => {
                    if slot.batch_logged {
                        continue;
                    }
                    slot.batch_logged = true;
                    slot.batch.clone()
                }
                // A kept batch is logged already.
                _ => fetched.and_then(|fetched| fetched.get(&key)).cloned(),
            };
            if let Some(batch) = batch {
                self.outbox
                    .persist(Record::Accepted(proposal.clone(), batch));
            }
        }
    }

    /// The fetched batch for (`seq`, `digest`), taken for the new view being entered.
    pub(super) fn take_fetched(&mut self, seq: u64, digest: Digest) -> Option<Batch> {
        self.batch_fetch
            .as_mut()
            .filter(|fetch| fetch.view == self.view)?
            .fetched
            .remove(&(seq, digest))
    }

    /// The kept batch for (`seq`, `digest`), back into the log for a view that re-proposes it.
    pub(super) fn take_kept(&mut self, seq: u64, digest: Digest) -> Option<Batch> {
        if self.kept.get(&seq)?.0.digest != digest {
            return None;
        }
        self.kept.remove(&seq).map(|(_, batch)| batch)
    }

    /// Before entering a view that proposes `proposed` (seq → digest): keeps the batch of
    /// each slot the log will let go of (another digest proposed there, or none) if it is the
    /// batch of this replica's latest vote of the prepare phase there.
    pub(super) fn keep_voted_batches(&mut self, proposed: &BTreeMap<u64, Digest>) {
        let low = self.low;
        for (&seq, slot) in self.log.range(low + 1..) {
            // The accepted pre-prepare, or after a restore from a compacted log the prepared
            // certificate's (the only record of the batch).
            let proposal = slot
                .proposal
                .as_ref()
                .or(slot.prepared.as_ref().map(|p| &p.proposal));
            let (Some(digest), Some(batch), Some(proposal)) = (slot.digest, &slot.batch, proposal)
            else {
                continue;
            };
            let leaving = slot.certificate.is_none() && proposed.get(&seq) != Some(&digest);
            let voted = self
                .signer
                .latest_at(seq)
                .is_some_and(|vote| vote.digest == digest);
            if leaving && voted && proposal.digest == digest {
                self.kept.insert(seq, (proposal.clone(), batch.clone()));
            }
        }
    }

    /// On the first input after a restore, as a backup: prepares each proposal of the current
    /// view whose batch it holds and that it has not prepared (it crashed between logging the
    /// batch and its vote, or its records brought the batch back).
    pub(super) fn prepare_held_proposals(&mut self) {
        if self.mode != Mode::Normal {
            return;
        }
        let view = self.view;
        let waiting: Vec<u64> = self
            .log
            .iter()
            .filter(|&(&seq, slot)| {
                slot.batch.is_some()
                    && slot.certificate.is_none()
                    && slot
                        .proposal
                        .as_ref()
                        .is_some_and(|p| p.view == view && p.replica != self.id)
                    && self.signer.get(Phase::Prepare, view, seq).is_none()
            })
            .map(|(&seq, _)| seq)
            .collect();
        for seq in waiting {
            self.prepare_reproposal(seq);
            self.advance(seq);
        }
    }

    /// Forgets what was fetched for a view no longer being started.
    pub(super) fn drop_batch_fetch(&mut self) {
        self.batch_fetch = None;
    }

    /// Whether this replica waits for batches before it can sign its new view.
    pub(super) fn awaits_batches(&self) -> bool {
        self.mode != Mode::Normal
            && self
                .batch_fetch
                .as_ref()
                .is_some_and(|fetch| fetch.view == self.view && !fetch.wanted.is_empty())
    }

    /// A new primary's request for batches: sends each one held, to it alone, once per
    /// `retransmit_ms`.
    ///
    /// # Errors
    ///
    /// [`Error::UnexpectedMessage`] unless this replica is changing to `view` and the sender
    /// is its primary, or for a list not in increasing order or longer than a window;
    /// [`Error::RateLimited`] within its interval.
    pub(super) fn on_fetch_batches(
        &mut self,
        peer: ReplicaId,
        fetch: FetchBatches,
    ) -> Result<(), Error> {
        // Only the primary of the view this replica is changing to asks: every validator
        // leads some later view, and each may not pull a window every interval.
        let changing = self.mode != Mode::Normal && fetch.view == self.view;
        if !changing || peer != self.validators.primary(fetch.view) {
            return Err(Error::UnexpectedMessage(
                "batches asked for by a validator not starting the view this one changes to",
            ));
        }
        if fetch.wanted.len() as u64 > self.config.window
            || !fetch.wanted.is_sorted_by(|a, b| a < b)
        {
            return Err(Error::UnexpectedMessage(
                "batches asked for out of order, twice, or more than a window",
            ));
        }
        if !self.timers.may_serve_batches(peer) {
            return Err(Error::RateLimited);
        }
        for (seq, digest) in fetch.wanted {
            if let Some(batch) = self.batch_with(seq, digest) {
                self.metrics.retransmitted += 1;
                let bytes = Message::Batch(BatchAt { seq, batch }).encode();
                self.send(Destination::Validator(peer), bytes);
            }
        }
        Ok(())
    }

    /// The batch with `digest` this replica holds at `seq`: in its log, kept, or archived.
    fn batch_with(&self, seq: u64, digest: Digest) -> Option<Batch> {
        if let Some((_, batch)) = self.kept.get(&seq).filter(|(p, _)| p.digest == digest) {
            return Some(batch.clone());
        }
        if let Some(slot) = self.log.get(&seq) {
            return slot.batch.clone().filter(|_| slot.digest == Some(digest));
        }
        self.archive
            .iter()
            .find(|committed| committed.certificate.seq == seq)
            .filter(|committed| committed.certificate.digest == digest)
            .map(|committed| committed.batch.clone())
    }

    /// A batch this replica asked for as a new primary; once the last one is in, it signs its
    /// new view.
    ///
    /// # Errors
    ///
    /// The batch limits of a pre-prepare ([`Error::BatchTooLarge`], [`Error::RequestTooLarge`]);
    /// [`Error::Duplicate`] for a batch already in; [`Error::UnexpectedMessage`] for a batch
    /// not asked for (another digest, another seq, or no fetch under way).
    pub(super) fn on_batch(&mut self, answer: BatchAt) -> Result<(), Error> {
        if !self.awaits_batches() {
            return Err(Error::UnexpectedMessage("batch not asked for"));
        }
        self.check_batch_limits(&answer.batch)?;
        let leaves = answer.batch.leaves(&self.config.chain_id);
        let key = (answer.seq, merkle::root(&leaves));
        let Some(fetch) = self.batch_fetch.as_mut() else {
            return Err(Error::UnexpectedMessage("batch not asked for"));
        };
        if fetch.fetched.contains_key(&key) {
            // Another holder's copy: several are asked.
            return Err(Error::Duplicate);
        }
        if !fetch.wanted.remove(&key) {
            return Err(Error::UnexpectedMessage("batch not asked for"));
        }
        fetch.fetched.insert(key, answer.batch);
        self.metrics.batches_fetched += 1;
        if fetch.wanted.is_empty() {
            self.send_new_view();
        }
        Ok(())
    }
}
