//! Checkpoints: every `checkpoint_interval` seqs each replica signs the digest of its state;
//! a quorum of matching signatures makes the checkpoint stable, which moves the low
//! watermark there and frees the log below it (Castro and Liskov, section 4.3).
//!
//! [`Checkpoints`] holds the votes above the stable checkpoint, this replica's own state
//! digests and the snapshots it serves; the `impl Replica` below signs, counts and moves the
//! window.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::Replica;
use super::output::{Output, Record};
use crate::certificate::conflicting;
use crate::config::ReplicaId;
use crate::crypto::Digest;
use crate::error::Error;
use crate::message::Message;
use crate::state::Snapshot;
use crate::statement::Evidence;
use crate::statement::{Phase, Vote};
use crate::view_change::{StableCheckpoint, verify_checkpoint};

/// The checkpoint state of one replica.
pub(super) struct Checkpoints {
    /// The highest stable checkpoint known.
    stable: StableCheckpoint,
    /// Checkpoint votes above the stable checkpoint, by seq and signer.
    votes: BTreeMap<u64, BTreeMap<ReplicaId, Vote>>,
    /// (seq, validator) already reported for signing two checkpoints at seq.
    reported: BTreeSet<(u64, ReplicaId)>,
    /// This replica's state digests at checkpoint seqs above the low watermark.
    own: BTreeMap<u64, Digest>,
    /// The state at checkpoints from the stable one up, and the one before it, to serve peers
    /// that fetch it.
    snapshots: BTreeMap<u64, Snapshot>,
    /// Checkpoints executed whose snapshot the host is still taking
    /// ([`Replica::executed_deferring`]), with the id of the job that takes it.
    deferred: BTreeMap<u64, u64>,
    /// The id of the next deferral.
    next_job: u64,
    /// The quorum's digest at checkpoints that became stable while this replica's own
    /// snapshot there was still being taken: compared when it comes back.
    stable_while_deferred: BTreeMap<u64, Digest>,
    /// The older state each peer is fetching, with when it last asked (ms): kept while in
    /// use, so a transfer slower than a checkpoint interval under load still finishes. At
    /// most one per peer: n - 1 old states at worst, at most f of them held by Byzantine
    /// peers (each up to `max_snapshot_bytes`).
    pins: BTreeMap<ReplicaId, (u64, u64)>,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            stable: StableCheckpoint::genesis(),
            votes: BTreeMap::new(),
            reported: BTreeSet::new(),
            own: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            deferred: BTreeMap::new(),
            next_job: 0,
            stable_while_deferred: BTreeMap::new(),
            pins: BTreeMap::new(),
        }
    }
}

impl Checkpoints {
    /// The highest stable checkpoint known.
    pub(super) fn stable(&self) -> &StableCheckpoint {
        &self.stable
    }

    /// Takes a verified stable checkpoint if it is newer than the one held, and forgets the
    /// votes at or below it. Returns whether it was newer.
    pub(super) fn take(&mut self, checkpoint: StableCheckpoint) -> bool {
        if checkpoint.seq <= self.stable.seq {
            return false;
        }
        if self.deferred.contains_key(&checkpoint.seq) {
            self.stable_while_deferred
                .insert(checkpoint.seq, checkpoint.digest);
        }
        self.stable = checkpoint;
        let stable = self.stable.seq;
        self.votes.retain(|&seq, _| seq > stable);
        self.reported.retain(|&(seq, _)| seq > stable);
        true
    }

    /// The vote `replica` signed at checkpoint `seq`, if held.
    pub(super) fn vote(&self, seq: u64, replica: ReplicaId) -> Option<&Vote> {
        self.votes.get(&seq).and_then(|votes| votes.get(&replica))
    }

    /// Counts a verified vote.
    pub(super) fn add_vote(&mut self, vote: Vote) {
        self.votes
            .entry(vote.seq)
            .or_default()
            .insert(vote.replica, vote);
    }

    /// Whether `replica` was already proven to have signed two states at `seq`; if not,
    /// remembers that it now is.
    pub(super) fn report(&mut self, seq: u64, replica: ReplicaId) -> bool {
        !self.reported.insert((seq, replica))
    }

    /// Whether `replica` was proven to have signed two states at `seq`.
    pub(super) fn was_reported(&self, seq: u64, replica: ReplicaId) -> bool {
        self.reported.contains(&(seq, replica))
    }

    /// The certificate of the checkpoint at `seq` if `quorum` votes agree on one digest (the
    /// first such digest, signers in id order).
    pub(super) fn certificate(&self, seq: u64, quorum: usize) -> Option<StableCheckpoint> {
        let votes = self.votes.get(&seq)?;
        let mut by_digest: BTreeMap<_, Vec<&Vote>> = BTreeMap::new();
        for vote in votes.values() {
            by_digest.entry(vote.digest).or_default().push(vote);
        }
        let (digest, signers) = by_digest.into_iter().find(|(_, v)| v.len() >= quorum)?;
        let signatures = signers
            .iter()
            .take(quorum)
            .map(|vote| (vote.replica, vote.signature))
            .collect();
        Some(StableCheckpoint {
            seq,
            digest,
            signatures,
        })
    }

    /// Whether `id` signed a checkpoint that is not stable yet.
    pub(super) fn awaits(&self, id: ReplicaId) -> bool {
        self.votes.values().any(|votes| votes.contains_key(&id))
    }

    /// The checkpoint votes `id` signed above `seq`, oldest first.
    pub(super) fn own_votes_above(&self, seq: u64, id: ReplicaId) -> Vec<Vote> {
        self.votes
            .range(seq.saturating_add(1)..)
            .filter_map(|(_, votes)| votes.get(&id).cloned())
            .collect()
    }

    /// This replica's state digests at the checkpoints above `seq` it reached, oldest first.
    pub(super) fn own_above(&self, seq: u64) -> Vec<(u64, Digest)> {
        self.own
            .range(seq.saturating_add(1)..)
            .map(|(&seq, &digest)| (seq, digest))
            .collect()
    }

    /// This replica's state digest at `seq`, if it reached that checkpoint.
    pub(super) fn own(&self, seq: u64) -> Option<Digest> {
        self.own.get(&seq).copied()
    }

    /// Records this replica's state digest at `seq`.
    pub(super) fn set_own(&mut self, seq: u64, state: Digest) {
        self.own.insert(seq, state);
    }

    /// The state held at checkpoint `seq`.
    pub(super) fn snapshot(&self, seq: u64) -> Option<&Snapshot> {
        self.snapshots.get(&seq)
    }

    /// Keeps the state at checkpoint `seq` to serve it.
    pub(super) fn keep_snapshot(&mut self, seq: u64, snapshot: Snapshot) {
        self.snapshots.insert(seq, snapshot);
    }

    /// Notes that the host takes the snapshot at checkpoint `seq` later; the job's id.
    pub(super) fn defer(&mut self, seq: u64) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.deferred.insert(seq, id);
        if seq == self.stable.seq {
            // Stable already (this replica is behind): the quorum's digest is kept for the
            // comparison, in case the stable checkpoint moves on before the snapshot is back.
            self.stable_while_deferred.insert(seq, self.stable.digest);
        }
        id
    }

    /// Whether job `id`'s snapshot at `seq` is awaited.
    pub(super) fn awaits_job(&self, seq: u64, id: u64) -> bool {
        self.deferred.get(&seq) == Some(&id)
    }

    /// Stops awaiting the snapshot at `seq`; the quorum's digest there if the checkpoint
    /// became stable while it was awaited.
    pub(super) fn undefer(&mut self, seq: u64) -> Option<Digest> {
        self.deferred.remove(&seq);
        self.stable_while_deferred.remove(&seq)
    }

    /// Stops awaiting every deferred snapshot: the state they were taken of was replaced.
    pub(super) fn cancel_deferred(&mut self) {
        self.deferred.clear();
        self.stable_while_deferred.clear();
    }

    /// The checkpoint seqs whose state is held.
    pub(super) fn snapshot_seqs(&self) -> impl Iterator<Item = &u64> {
        self.snapshots.keys()
    }

    /// Forgets this replica's own digests and states from checkpoint `seq` up: they were
    /// computed on a state that diverged, and must be neither served nor compared again.
    pub(super) fn forget_own_from(&mut self, seq: u64) {
        self.own.retain(|&at, _| at < seq);
        self.snapshots.retain(|&at, _| at < seq);
        self.deferred.retain(|&at, _| at < seq);
        self.stable_while_deferred.retain(|&at, _| at < seq);
    }

    /// Notes that `peer` fetched the state at `seq` at `now` (ms): it stays held while the
    /// peer keeps asking.
    pub(super) fn pin(&mut self, peer: ReplicaId, seq: u64, now: u64) {
        self.pins.insert(peer, (seq, now));
    }

    /// Forgets own digests at or below `low`, and states below the stable checkpoint (peers
    /// may still fetch the stable one) that no peer fetched within `idle_ms` of `now`, but
    /// the newest of them: a peer that learned of the stable checkpoint a message delay ago
    /// asks for that one, and under load the checkpoint moves on in less (a checkpoint every
    /// few ms made every first request of a transfer miss). The state at `base` (where the
    /// epoch started) stays too: a replica still in the previous epoch can only reach it.
    pub(super) fn prune(&mut self, (low, base): (u64, u64), now: u64, idle_ms: u64) {
        self.own.retain(|&seq, _| seq > low);
        self.pins
            .retain(|_, &mut (_, at)| now < at.saturating_add(idle_ms));
        let stable = self.stable.seq;
        let previous = self
            .snapshots
            .range(..stable)
            .next_back()
            .map(|(&seq, _)| seq);
        let pins = &self.pins;
        self.snapshots.retain(|&seq, _| {
            seq >= stable
                || seq == base
                || Some(seq) == previous
                || pins.values().any(|&(at, _)| at == seq)
        });
    }

    /// Entries held for the network: votes, reports, snapshots (held and awaited) and pins.
    pub(super) fn footprint(&self) -> usize {
        self.votes.values().map(BTreeMap::len).sum::<usize>()
            + self.reported.len()
            + self.snapshots.len()
            + self.deferred.len()
            + self.stable_while_deferred.len()
            + self.pins.len()
    }
}

impl Replica {
    /// Signs, persists and broadcasts this replica's checkpoint at `seq` (just executed) over
    /// the digest of its state there.
    pub(super) fn checkpoint(&mut self, seq: u64, state: Digest) {
        let stable = self.checkpoints.stable().seq;
        if seq < stable {
            return;
        }
        self.checkpoints.set_own(seq, state);
        if seq == stable {
            // Stable before this replica got there: nothing to sign, but its own state is
            // compared with the quorum's (`check_diverged`).
            return;
        }
        let Some(vote) = self
            .signer
            .vote(&mut self.metrics, Phase::Checkpoint, (0, seq), state)
        else {
            // Before a restart this replica reached another state at `seq`.
            return;
        };
        self.publish(Record::Signed(vote.clone()), &Message::Vote(vote.clone()));
        self.checkpoints.add_vote(vote);
        self.check_stable(seq);
    }

    /// Signs the checkpoint vote of each state it reached above the stable checkpoint and
    /// did not sign (withheld by rollback protection, or restored from the store after a
    /// crash before the vote).
    pub(super) fn sign_own_checkpoints(&mut self) {
        let stable = self.checkpoints.stable().seq;
        for (seq, state) in self.checkpoints.own_above(stable) {
            if self.signer.get(Phase::Checkpoint, 0, seq).is_none() {
                self.checkpoint(seq, state);
            }
        }
    }

    pub(super) fn on_checkpoint_vote(&mut self, vote: Vote) -> Result<(), Error> {
        let seq = vote.seq;
        if vote.view != 0 || !seq.is_multiple_of(self.config.checkpoint_interval) {
            return Err(Error::UnexpectedMessage("checkpoint off the interval"));
        }
        let stable = self.checkpoints.stable().seq;
        if seq <= stable {
            return Err(Error::Duplicate);
        }
        let high = self.low + 2 * self.config.window;
        if seq > high {
            return Err(Error::OutOfWindow {
                seq,
                low: stable + 1,
                high,
            });
        }
        let known = self.checkpoints.vote(seq, vote.replica);
        if known.is_some_and(|known| known.digest == vote.digest) {
            return Err(Error::Duplicate);
        }
        if self.checkpoints.was_reported(seq, vote.replica) {
            // Already proven against it here: a repeat costs no check and no second report.
            return Err(Error::Equivocation(vote.replica));
        }
        let first = known.cloned();
        let key = *self
            .validators
            .key(vote.replica)
            .ok_or(Error::NotAValidator)?;
        self.metrics.signatures_verified += 1;
        key.verify(
            &vote.signed_digest(&self.config.chain_id, self.validators.epoch()),
            &vote.signature,
        )?;
        // Both are checkpoint votes of view 0 at `seq` by one signer: a conflict exactly when
        // the states differ, which the check shared with `verify_evidence` confirms.
        if let Some(first) = first.filter(|first| conflicting(first, &vote)) {
            // Two states signed for one seq: evidence, reported once; the first vote stays.
            let culprit = vote.replica;
            self.checkpoints.report(seq, culprit);
            let evidence = Evidence {
                epoch: self.validators.epoch(),
                first,
                second: vote,
            };
            self.found_evidence(evidence, key.public_key());
            return Err(Error::Equivocation(culprit));
        }
        self.checkpoints.add_vote(vote);
        self.check_stable(seq);
        Ok(())
    }

    /// Compares this replica's own state at the stable checkpoint with the quorum's, once
    /// both are known. A replica that reached another state there diverged (its storage is
    /// corrupt, its application not deterministic, or its store was restored wrong): going on
    /// would execute every later batch on a wrong state. It says so
    /// ([`Output::StateDiverged`]), forgets its own states from there (never to serve them),
    /// stops delivering, and fetches the stable state by state transfer, which replaces its
    /// own with an [`Output::Install`]. The quorum's checkpoint is the state (Castro and
    /// Liskov, section 4.3).
    pub(super) fn check_diverged(&mut self) {
        let stable = self.checkpoints.stable();
        let (seq, digest) = (stable.seq, stable.digest);
        let Some(own) = self.checkpoints.own(seq) else {
            return;
        };
        self.compare_state(seq, own, digest);
    }

    /// Compares this replica's `own` state digest at checkpoint `seq` with the quorum's
    /// (`stable`), and acts on a divergence as [`Replica::check_diverged`] says.
    pub(super) fn compare_state(&mut self, seq: u64, own: Digest, stable: Digest) {
        if own == stable || self.repairing() {
            return;
        }
        self.metrics.checkpoint_mismatches += 1;
        self.outbox.push(Output::StateDiverged { seq, own, stable });
        self.checkpoints.forget_own_from(seq);
        self.start_repair();
    }

    /// Makes the checkpoint at `seq` stable if a quorum signed one digest.
    fn check_stable(&mut self, seq: u64) {
        let quorum = self.validators.quorum();
        if let Some(checkpoint) = self.checkpoints.certificate(seq, quorum) {
            self.metrics.checkpoints_stable += 1;
            self.adopt_checkpoint(checkpoint);
        }
    }

    pub(super) fn on_stable_checkpoint(
        &mut self,
        checkpoint: StableCheckpoint,
    ) -> Result<(), Error> {
        if checkpoint.seq <= self.checkpoints.stable().seq {
            return Err(Error::Duplicate);
        }
        self.metrics.signatures_verified += checkpoint.signatures.len() as u64;
        self.metrics.signatures_batch_verified += checkpoint.signatures.len() as u64;
        match verify_checkpoint(&self.config.chain_id, &self.validators, &checkpoint) {
            Ok(()) => {
                self.adopt_checkpoint(checkpoint);
                Ok(())
            }
            // Its epoch is over: a checkpoint of the last epoch the changes reach is where
            // this replica jumps to when its peers no longer hold what it lacks.
            Err(_) if !self.epochs.ahead.is_empty() => self.jump_target(checkpoint),
            Err(err) => Err(err.into()),
        }
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
        if checkpoint.seq <= self.checkpoints.stable().seq {
            return;
        }
        self.outbox.persist(Record::Stable(checkpoint.clone()));
        self.checkpoints.take(checkpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChainId;
    use crate::crypto::Keypair;

    fn vote(replica: u16, seq: u64, digest: u8) -> Vote {
        Vote::new(
            &ChainId::from_name("test"),
            0,
            Phase::Checkpoint,
            (0, seq),
            Digest([digest; 32]),
            ReplicaId(replica),
            &Keypair::from_seed(&[replica as u8 + 1; 32]),
        )
    }

    #[test]
    fn a_quorum_on_one_digest_makes_a_certificate() {
        let mut checkpoints = Checkpoints::default();
        checkpoints.add_vote(vote(0, 10, 1));
        checkpoints.add_vote(vote(1, 10, 2));
        checkpoints.add_vote(vote(2, 10, 1));
        assert_eq!(checkpoints.certificate(10, 3), None, "2 + 1 split");
        checkpoints.add_vote(vote(3, 10, 1));
        let certificate = checkpoints.certificate(10, 3).expect("three agree");
        assert_eq!(certificate.digest, Digest([1; 32]));
        let signers: Vec<u16> = certificate.signatures.iter().map(|(id, _)| id.0).collect();
        assert_eq!(signers, [0, 2, 3]);
    }

    #[test]
    fn taking_a_newer_checkpoint_forgets_the_votes_below_it() {
        let mut checkpoints = Checkpoints::default();
        for replica in 0..3 {
            checkpoints.add_vote(vote(replica, 10, 1));
            checkpoints.add_vote(vote(replica, 20, 1));
        }
        assert!(!checkpoints.report(10, ReplicaId(3)));
        assert!(checkpoints.report(10, ReplicaId(3)), "reported once");
        let at_10 = checkpoints.certificate(10, 3).expect("certificate");
        assert!(checkpoints.take(at_10.clone()));
        assert!(!checkpoints.take(at_10), "not newer");
        assert_eq!(checkpoints.vote(10, ReplicaId(0)), None);
        assert!(!checkpoints.was_reported(10, ReplicaId(3)));
        assert!(checkpoints.vote(20, ReplicaId(0)).is_some());
        assert!(checkpoints.awaits(ReplicaId(1)));
        assert_eq!(checkpoints.own_votes_above(0, ReplicaId(1)).len(), 1);
    }
}
