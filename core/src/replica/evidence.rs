//! Equivocation evidence on its way to being committed.
//!
//! A replica that finds evidence (two conflicting signed votes of one validator, see
//! [`crate::Evidence`]) or receives it from a peer keeps it in its [`EvidencePool`] and
//! forwards it to every peer once, so a conflict one replica saw reaches the primary. The
//! primary puts pending evidence into its next batch (at most
//! [`crate::MAX_BATCH_EVIDENCE`]); backups verify it before they prepare; once committed it
//! is delivered to the application with the batch, so every correct replica learns of the
//! same misbehaviour at the same seq, and punishment can be a replicated decision rather
//! than one replica's view.
//!
//! Bounded: the pool keeps one piece of evidence per (epoch, offender, phase), pending or
//! committed, so an epoch's set of n validators costs at most 4n entries and forwards
//! however many copies peers send; a peer whose evidence fails its check pays for the two
//! checks from its share of the replica's checks, as for view changes.
//!
//! Committed evidence is delivered, not deduplicated: a batch may carry evidence committed
//! before (two pieces for one offender and phase, or one proposed again for a peer that
//! restarted). An application punishes per (epoch, offender), whatever the count.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::{Destination, Output, Record, Replica};
use crate::certificate::verify_evidence;
use crate::config::ReplicaId;
use crate::crypto::{Digest, PublicKey, VerifyingKey};
use crate::error::Error;
use crate::message::Message;
use crate::statement::{Evidence, MAX_BATCH_EVIDENCE, Phase, Vote};

/// What one piece of evidence is about: (epoch, offender, phase).
type Key = (u64, ReplicaId, Phase);

fn key(evidence: &Evidence) -> Key {
    (evidence.epoch, evidence.offender(), evidence.first.phase)
}

/// A piece of evidence waiting for a batch: the evidence, its batch leaf, when it must have
/// committed (ms), and the key it convicts.
type Pending = (Evidence, Digest, u64, PublicKey);

/// Evidence this replica holds until a batch carrying it commits.
///
/// Pending evidence holds the primary to a deadline as a watched request does: a primary
/// that leaves it out (evidence against itself, say) is replaced by a view change.
#[derive(Debug, Default)]
pub(super) struct EvidencePool {
    /// Evidence not yet committed: the evidence, its batch leaf, when it must have
    /// committed (ms), and the offender's key.
    pending: BTreeMap<Key, Pending>,
    /// Evidence this replica saw committed. Not replicated state: a replica that restarted
    /// or fetched a checkpoint may not know what committed before.
    committed: BTreeSet<Key>,
    /// The view in which `recommitted` holds, and the committed keys this replica, as its
    /// primary, proposed again in it for a peer that did not know they had committed.
    recommitted: (u64, BTreeSet<Key>),
    /// Pre-prepares of the current view that this replica refused, their primary's
    /// signature checked, by (seq, view): half of an equivocation the primary's other
    /// proposal for the slot may complete. Seqs in the window only, the two highest views of
    /// each (so a later view's refusal cannot evict the one an earlier primary's stale
    /// proposal would complete).
    refused: BTreeMap<(u64, u64), Vote>,
}

impl EvidencePool {
    /// Keeps `evidence` until it commits, or until `deadline` (ms) passes and the view
    /// changes, unless one of its key is pending; whether it was new.
    fn add(
        &mut self,
        evidence: Evidence,
        leaf: Digest,
        deadline: u64,
        offender: PublicKey,
    ) -> bool {
        let key = key(&evidence);
        if self.pending.contains_key(&key) {
            return false;
        }
        self.pending
            .insert(key, (evidence, leaf, deadline, offender));
        true
    }

    /// Drops pending evidence against keys `keep` refuses (scheduled out of the set: nothing
    /// more to decide, so nothing to hold a primary to).
    pub(super) fn retain_pending(&mut self, mut keep: impl FnMut(&PublicKey) -> bool) {
        self.pending.retain(|_, (_, _, _, offender)| keep(offender));
    }

    /// Takes every pending piece with the key it convicts (a replica entering the next epoch
    /// keeps what is still to commit).
    pub(super) fn take_pending(&mut self) -> Vec<(Evidence, PublicKey)> {
        core::mem::take(&mut self.pending)
            .into_values()
            .map(|(evidence, _, _, offender)| (evidence, offender))
            .collect()
    }

    /// The earliest deadline of pending evidence.
    pub(super) fn deadline(&self) -> Option<u64> {
        self.pending
            .values()
            .map(|(_, _, deadline, _)| *deadline)
            .min()
    }

    /// Gives all pending evidence a new `deadline` (a new view's primary gets its time) and
    /// returns copies of it.
    pub(super) fn rearm(&mut self, deadline: u64) -> Vec<Evidence> {
        self.pending
            .values_mut()
            .map(|(evidence, _, due, _)| {
                *due = deadline;
                evidence.clone()
            })
            .collect()
    }

    /// Forgets pending evidence, at a backup after a state transfer: the batches it skipped
    /// may have committed it, and it cannot tell (what committed is not in the checkpoint's
    /// state), so its deadline would time out the view alone. Its peers hold it too (it was
    /// forwarded to all), so it is not lost; a primary keeps it and commits it again.
    pub(super) fn forget_pending(&mut self) {
        self.pending.clear();
    }

    /// The pending evidence, as records for the log ([`Record::Evidence`]).
    pub(super) fn pending_records(&self) -> impl Iterator<Item = Record> + '_ {
        self.pending
            .values()
            .map(|(evidence, ..)| Record::Evidence(evidence.clone()))
    }

    /// The refused pre-prepares `id` signed (rollback protection hands them back to it).
    pub(super) fn refused_of(&self, id: ReplicaId) -> impl Iterator<Item = &Vote> {
        self.refused.values().filter(move |vote| vote.replica == id)
    }

    /// Forgets refused pre-prepares at or below `seq` (the low watermark moved past them).
    pub(super) fn forget_refused_through(&mut self, seq: u64) {
        self.refused = self.refused.split_off(&(seq.saturating_add(1), 0));
    }

    /// Keeps a refused pre-prepare: at most two views per seq, the highest.
    fn keep_refused(&mut self, vote: Vote) {
        let seq = vote.seq;
        self.refused.entry((seq, vote.view)).or_insert(vote);
        let views: Vec<u64> = self
            .refused
            .range((seq, 0)..=(seq, u64::MAX))
            .map(|(&(_, view), _)| view)
            .collect();
        if let Some(&lowest) = views.first()
            && views.len() > 2
        {
            self.refused.remove(&(seq, lowest));
        }
    }

    /// Refused pre-prepares held (for the memory accounting).
    pub(super) fn refused_len(&self) -> usize {
        self.refused.len()
    }

    /// Whether evidence against `offender` for `phase` in `epoch` is held or committed here.
    fn holds(&self, epoch: u64, offender: ReplicaId, phase: Phase) -> bool {
        let key = (epoch, offender, phase);
        self.pending.contains_key(&key) || self.committed.contains(&key)
    }

    /// Records that a batch carrying `evidence` committed.
    pub(super) fn commit(&mut self, evidence: &[Evidence]) {
        for evidence in evidence {
            let key = key(evidence);
            self.pending.remove(&key);
            self.committed.insert(key);
        }
    }
}

impl Replica {
    /// Emits evidence of a verified conflicting vote (once per signer and slot).
    pub(super) fn report(&mut self, seq: u64, first: Vote, second: Vote) -> Result<(), Error> {
        let culprit = second.replica;
        let epoch = self.validators.epoch();
        let offender = self.validators.key(culprit).map(|key| key.public_key());
        if let Some(evidence) = self
            .log
            .get_mut(&seq)
            .and_then(|slot| slot.evidence(epoch, first, second))
            && let Some(offender) = offender
        {
            self.found_evidence(evidence, offender);
        }
        Err(Error::Equivocation(culprit))
    }

    /// Evidence from the log at a restart: pending again, against the key of its epoch's set
    /// (if that set is known), without a new broadcast. Its deadline is set, and keys no
    /// longer punishable dropped, on the first input ([`Replica::resume_evidence`]).
    pub(super) fn restore_evidence(&mut self, evidence: Evidence) {
        let Ok(set) = self.set_of_epoch(evidence.epoch) else {
            return;
        };
        let Some(offender) = set.key(evidence.offender()).map(VerifyingKey::public_key) else {
            return;
        };
        let leaf = evidence.digest(&self.config.chain_id);
        self.evidence.add(evidence, leaf, u64::MAX, offender);
    }

    /// On the first input after a restore, once the time and the schedule are known: drops
    /// restored evidence against keys no longer punishable (the batch that scheduled them out
    /// committed it), gives the rest a view timeout from now, and as a backup hands it to the
    /// primary, which proposes it, or proposes it again if it committed while this replica
    /// was down (a backup cannot tell, and would otherwise time the view out alone).
    pub(super) fn resume_evidence(&mut self) {
        let (validators, schedule) = (&self.validators, self.epochs.schedule.as_ref());
        self.evidence
            .retain_pending(|key| super::epoch::punishable(validators, schedule, key));
        let evidence = self.evidence.rearm(self.timers.timeout_from_now());
        if self.is_primary() {
            self.propose(false);
            return;
        }
        let primary = Destination::Validator(self.validators.primary(self.view));
        for evidence in evidence {
            self.send(primary.clone(), Message::Evidence(evidence).encode());
        }
    }

    /// Reports evidence this replica verified (found itself or received), forwards it to
    /// every peer the first time, and, as the primary, proposes it.
    /// `offender` is the key it convicts; evidence against a key no longer punishable (out
    /// of the set, or scheduled out) is dropped.
    pub(super) fn found_evidence(&mut self, evidence: Evidence, offender: PublicKey) {
        let key = key(&evidence);
        if self.evidence.pending.contains_key(&key)
            || self.evidence.committed.contains(&key)
            || !self.punishable(&offender)
        {
            return;
        }
        let leaf = evidence.digest(&self.config.chain_id);
        let deadline = self.timers.timeout_from_now();
        self.evidence
            .add(evidence.clone(), leaf, deadline, offender);
        self.metrics.evidence_reported += 1;
        self.outbox.persist(Record::Evidence(evidence.clone()));
        self.send(
            Destination::AllValidators,
            Message::Evidence(evidence.clone()).encode(),
        );
        self.outbox.push(Output::Evidence(evidence));
        if self.is_primary() {
            self.propose(false);
        }
    }

    /// A peer's evidence: checked against this epoch's set unless one of its kind is held.
    ///
    /// Evidence this replica saw committed is dropped, except at the primary, which proposes
    /// it again once per view: the peer may hold it pending because it restarted or fetched a
    /// checkpoint since it committed, and only a commit it sees clears it.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] for evidence of a kind held or committed (unchecked);
    /// [`Error::OverBudget`] when `peer` spent its share of checks on evidence that failed;
    /// [`Error::Certificate`] when it does not verify ([`verify_evidence`]), which costs
    /// `peer` two checks of its share.
    pub(super) fn on_evidence(&mut self, peer: ReplicaId, evidence: Evidence) -> Result<(), Error> {
        let key = key(&evidence);
        let committed = self.evidence.committed.contains(&key);
        if committed {
            let primary = self.is_primary();
            let view = self.view;
            let recommitted = &mut self.evidence.recommitted;
            if recommitted.0 != view {
                *recommitted = (view, BTreeSet::new());
            }
            if !primary || recommitted.1.contains(&key) {
                return Err(Error::Duplicate);
            }
        }
        if self.evidence.pending.contains_key(&key) {
            return Err(Error::Duplicate);
        }
        let now = self.timers.now();
        if !self.budget.allows(peer, now) {
            return Err(Error::OverBudget);
        }
        // Against the set of its epoch (an earlier one's evidence still convicts its key),
        // and only while it can still change the set.
        let set = self.set_of_epoch(evidence.epoch)?;
        let offender = set
            .key(evidence.offender())
            .map(VerifyingKey::public_key)
            .ok_or(Error::NotAValidator)?;
        if !self.punishable(&offender) {
            return Err(Error::Duplicate);
        }
        self.metrics.signatures_verified += 2;
        if let Err(err) = verify_evidence(&self.config.chain_id, &set, &evidence) {
            self.budget.charge(peer, 2, now);
            return Err(err.into());
        }
        if !committed {
            self.found_evidence(evidence, offender);
            return Ok(());
        }
        self.evidence.recommitted.1.insert(key);
        let leaf = evidence.digest(&self.config.chain_id);
        let deadline = self.timers.timeout_from_now();
        self.evidence.add(evidence, leaf, deadline, offender);
        self.propose(false);
        Ok(())
    }

    /// A pre-prepare this replica does not accept (its batch refused, its view over, or a
    /// view change under way) is still its primary's signed statement. If the slot holds
    /// another digest the same primary signed for the same view (accepted, prepared, or
    /// refused earlier), the two are evidence; if not, one of the current view is kept to
    /// match the other proposal when it comes. Without this a double-signing primary went
    /// unconvicted wherever its first proposal was refused (a request in it already in
    /// flight from its other proposal).
    ///
    /// Costs at most one signature check per such message from `from` (any validator may
    /// relay a primary's proposal): none for a stale one that conflicts with nothing, none
    /// once the primary is convicted this epoch or can no longer be punished, and one that
    /// fails is charged to `from`'s share of checks, as failed evidence is.
    ///
    /// Not matched: the refused half is not forwarded (a peer may have accepted the other),
    /// a slot whose QC arrived first, and a proposal refused for a client signature.
    ///
    /// # Errors
    ///
    /// `refusal`; [`Error::Equivocation`] when it completes evidence; the signature's error.
    pub(super) fn on_unaccepted_proposal(
        &mut self,
        from: &PublicKey,
        vote: Vote,
        refusal: Error,
    ) -> Result<(), Error> {
        let (seq, primary, epoch) = (vote.seq, vote.replica, self.validators.epoch());
        let floor = self.low.max(self.validators.base().0);
        let (Some(key), Some(peer)) = (
            self.validators.key(primary).cloned(),
            self.validators.id_of(from),
        ) else {
            return Err(refusal);
        };
        let now = self.timers.now();
        if vote.phase != Phase::PrePrepare
            || primary != self.validators.primary(vote.view)
            || seq <= floor
            || seq > self.high()
            || self.evidence.holds(epoch, primary, Phase::PrePrepare)
            || !self.punishable(&key.public_key())
            || !self.budget.allows(peer, now)
        {
            return Err(refusal);
        }
        let slot = self.log.get(&seq);
        let signed_here = [
            slot.and_then(|slot| slot.proposal.as_ref()),
            slot.and_then(|slot| slot.prepared.as_ref().map(|p| &p.proposal)),
            self.evidence.refused.get(&(seq, vote.view)),
        ];
        let same_view: Vec<&Vote> = signed_here
            .into_iter()
            .flatten()
            .filter(|first| first.view == vote.view)
            .collect();
        let first = same_view
            .iter()
            .find(|first| first.digest != vote.digest)
            .map(|first| (*first).clone());
        let known = same_view.iter().any(|first| first.digest == vote.digest);
        if first.is_none() && (known || vote.view < self.view) {
            return Err(refusal);
        }
        self.metrics.signatures_verified += 1;
        let signed = vote.signed_digest(&self.config.chain_id, epoch);
        if let Err(err) = key.verify(&signed, &vote.signature) {
            self.budget.charge(peer, 1, now);
            return Err(err.into());
        }
        let Some(first) = first else {
            self.evidence.keep_refused(vote);
            return Err(refusal);
        };
        let evidence = Evidence {
            epoch,
            first,
            second: vote,
        };
        self.found_evidence(evidence, key.public_key());
        Err(Error::Equivocation(primary))
    }

    /// After accepting the pre-prepare `vote` (its signature checked, or a new view's
    /// re-proposal): evidence if this replica refused another digest its primary signed for
    /// the same slot and view.
    pub(super) fn match_refused_proposal(&mut self, vote: &Vote) {
        let Some(first) = self
            .evidence
            .refused
            .get(&(vote.seq, vote.view))
            .filter(|first| first.digest != vote.digest)
            .cloned()
        else {
            return;
        };
        let epoch = self.validators.epoch();
        if let Some(key) = self
            .validators
            .key(vote.replica)
            .map(VerifyingKey::public_key)
        {
            let second = vote.clone();
            self.found_evidence(
                Evidence {
                    epoch,
                    first,
                    second,
                },
                key,
            );
        }
    }

    /// The evidence for the next batch: pending, against a key still punishable, and in no
    /// batch in flight here; at most [`MAX_BATCH_EVIDENCE`].
    pub(super) fn evidence_to_propose(&self) -> Vec<Evidence> {
        if planted!(self.config, PrimaryOmitsEvidence) {
            return Vec::new();
        }
        self.evidence
            .pending
            .values()
            .filter(|(_, leaf, _, offender)| {
                self.punishable(offender) && !self.intake.is_in_flight(leaf)
            })
            .take(MAX_BATCH_EVIDENCE)
            .map(|(evidence, _, _, _)| evidence.clone())
            .collect()
    }

    /// Whether the primary has anything to propose: requests, evidence, or empty batches up
    /// to a scheduled boundary.
    pub(super) fn has_proposable(&self) -> bool {
        self.intake.pending_len() > 0 || !self.evidence_to_propose().is_empty() || self.must_pad()
    }
}
