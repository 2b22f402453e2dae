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
//! Bounded: the pool keeps one piece of evidence per (offender, phase), pending or
//! committed, so an epoch's set of n validators costs at most 4n entries, forwards and
//! checks however many copies peers send.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::{Destination, Output, Replica};
use crate::certificate::verify_evidence;
use crate::config::ReplicaId;
use crate::error::Error;
use crate::message::Message;
use crate::statement::Evidence;
use crate::statement::{MAX_BATCH_EVIDENCE, Phase};

/// Evidence this replica holds: pending until a batch carrying it commits.
///
/// Pending evidence holds the primary to a deadline as a watched request does: a primary
/// that leaves it out (evidence against itself, say) is replaced by a view change.
#[derive(Debug, Default)]
pub(super) struct EvidencePool {
    /// (offender, phase) → evidence not yet committed, and when it must have committed (ms).
    pending: BTreeMap<(ReplicaId, Phase), (Evidence, u64)>,
    /// (offender, phase) of evidence committed in this epoch.
    committed: BTreeSet<(ReplicaId, Phase)>,
}

fn key(evidence: &Evidence) -> (ReplicaId, Phase) {
    (evidence.offender(), evidence.first.phase)
}

impl EvidencePool {
    /// Whether evidence of this kind against this validator is held or committed already.
    pub(super) fn knows(&self, evidence: &Evidence) -> bool {
        let key = key(evidence);
        self.pending.contains_key(&key) || self.committed.contains(&key)
    }

    /// Keeps `evidence` until it commits, or until `deadline` (ms) passes and the view
    /// changes, unless [`EvidencePool::knows`] one like it; whether it was new.
    fn add(&mut self, evidence: Evidence, deadline: u64) -> bool {
        if self.knows(&evidence) {
            return false;
        }
        self.pending.insert(key(&evidence), (evidence, deadline));
        true
    }

    /// The earliest deadline of pending evidence.
    pub(super) fn deadline(&self) -> Option<u64> {
        self.pending.values().map(|(_, deadline)| *deadline).min()
    }

    /// Gives all pending evidence a new `deadline` (a new view's primary gets its time) and
    /// returns copies of it.
    pub(super) fn rearm(&mut self, deadline: u64) -> Vec<Evidence> {
        self.pending
            .values_mut()
            .map(|(evidence, due)| {
                *due = deadline;
                evidence.clone()
            })
            .collect()
    }

    /// Pending evidence for a batch: at most [`MAX_BATCH_EVIDENCE`], skipping what
    /// `in_flight` says an uncommitted batch carries already.
    fn proposable(&self, in_flight: impl Fn(&Evidence) -> bool) -> Vec<Evidence> {
        self.pending
            .values()
            .map(|(evidence, _)| evidence)
            .filter(|evidence| !in_flight(evidence))
            .take(MAX_BATCH_EVIDENCE)
            .cloned()
            .collect()
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
    /// Reports evidence this replica verified (found itself or received), forwards it to
    /// every peer the first time, and, as the primary, proposes it.
    pub(super) fn found_evidence(&mut self, evidence: Evidence) {
        let deadline = self.timers.timeout_from_now();
        if !self.evidence.add(evidence.clone(), deadline) {
            return;
        }
        self.metrics.evidence_reported += 1;
        self.send(
            Destination::AllValidators,
            Message::Evidence(evidence.clone()).encode(),
        );
        self.outbox.push(Output::Evidence(evidence));
        if self.is_primary() {
            self.propose(false);
        }
    }

    /// A peer's evidence: checked against this epoch's set unless one like it is known.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] for evidence of a kind and offender known already (unchecked);
    /// [`Error::Certificate`] when it does not verify ([`verify_evidence`]).
    pub(super) fn on_evidence(&mut self, evidence: Evidence) -> Result<(), Error> {
        if self.evidence.knows(&evidence) {
            return Err(Error::Duplicate);
        }
        self.metrics.signatures_verified += 2;
        verify_evidence(&self.config.chain_id, &self.validators, &evidence)?;
        self.found_evidence(evidence);
        Ok(())
    }

    /// The evidence for the next batch: pending, and in no batch in flight here.
    pub(super) fn evidence_to_propose(&self) -> Vec<Evidence> {
        if planted!(self.config, PrimaryOmitsEvidence) {
            return Vec::new();
        }
        let chain = self.config.chain_id;
        self.evidence
            .proposable(|evidence| self.intake.is_in_flight(&evidence.digest(&chain)))
    }
}
