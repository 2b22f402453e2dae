//! The signer: the replica's key, the index of what it signed, and the rule that it never
//! signs two digests for one statement.
//!
//! Every signature the replica makes goes through here. Votes are indexed by (phase, view,
//! seq); a second vote for the same statement gets the first back if the digest matches and
//! nothing otherwise, also across restarts: every signed vote is persisted, and
//! [`super::Replica::restore`] feeds them back through [`Signer::remember`]. Entries go only
//! when nothing can ask for them again: below the low watermark, or in a view left.
//!
//! It also keeps, per seq, its latest vote of the prepare phase (a prepare, or a pre-prepare
//! as primary) across views, until the seq falls below the low watermark: a view change must
//! report it, or a batch committed on the fast path could be lost ([`crate::view_change`]).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::Replica;
use super::output::Record;
use super::recovery::Fence;
use crate::config::{ChainId, ReplicaId};
use crate::crypto::{Digest, Keypair, Signature};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::new_view::NewView;
use crate::statement::{Phase, Vote};
use crate::view_change::{Prepared, PreparedClaim, StableCheckpoint, ViewChange};

/// A signed statement's place: (phase, view, seq). Checkpoints use view 0.
type Statement = (Phase, u64, u64);

/// The replica's key and the votes it signed above the low watermark.
pub(super) struct Signer {
    keypair: Keypair,
    id: ReplicaId,
    chain: ChainId,
    epoch: u64,
    signed: BTreeMap<Statement, Vote>,
    /// seq → its latest (highest-view) pre-prepare or prepare, kept when its view is left.
    latest: BTreeMap<u64, Vote>,
    /// Votes it signed that peers held and its log had lost ([`super::recovery`]): they bind
    /// like `signed`, but no view change reports them (it may not hold their batches) and
    /// they are logged apart ([`Record::Fenced`]), so a restart does not take them back as
    /// votes of its log.
    lost: BTreeMap<Statement, Vote>,
    /// Rollback protection ([`super::recovery`]): until peers said what they hold signed by
    /// this key, it signs nothing they could hold against it.
    sealed: bool,
    /// Set once peers showed statements it signed that its log had lost (it was restored
    /// from an old copy), so it may have signed others there it cannot know of.
    fence: Option<Fence>,
}

impl Signer {
    /// A signer for validator `id` of `epoch` that signed nothing yet.
    pub(super) fn new(keypair: Keypair, id: ReplicaId, chain: ChainId, epoch: u64) -> Self {
        Signer {
            keypair,
            id,
            chain,
            epoch,
            signed: BTreeMap::new(),
            latest: BTreeMap::new(),
            lost: BTreeMap::new(),
            sealed: false,
            fence: None,
        }
    }

    /// Signs nothing a peer could hold against this replica until [`Signer::unseal`].
    pub(super) fn seal(&mut self) {
        self.sealed = true;
    }

    /// Signs again, within `fence` if given (checkpoints, which belong to no view, stay
    /// open: the signed index keeps their digests).
    pub(super) fn unseal(&mut self, fence: Option<Fence>) {
        self.sealed = false;
        self.close(fence);
    }

    /// Adds `fence` to the one it keeps (a restore brings back a logged one).
    pub(super) fn close(&mut self, fence: Option<Fence>) {
        self.fence = match (self.fence, fence) {
            (Some(kept), Some(new)) => Some(kept.merge(new)),
            (kept, new) => kept.or(new),
        };
    }

    /// The fence it keeps, if rollback protection ever found lost statements in its epoch.
    pub(super) fn fence(&self) -> Option<Fence> {
        self.fence
    }

    /// Whether it withholds a signature of `phase` in `view` ([`Signer::seal`],
    /// [`Signer::unseal`]).
    pub(super) fn withholds(&self, phase: Phase, view: u64) -> bool {
        self.sealed
            || (phase != Phase::Checkpoint
                && self
                    .fence
                    .and_then(|f| f.view)
                    .is_some_and(|closed| view <= closed))
    }

    /// Signs a vote for `digest` at (`view`, `seq`) unless this replica signed another digest
    /// for the same statement (counted in `refused_to_equivocate`); a repeat of the same vote
    /// gives back the first one without a new signature.
    pub(super) fn vote(
        &mut self,
        metrics: &mut Metrics,
        phase: Phase,
        (view, seq): (u64, u64),
        digest: Digest,
    ) -> Option<Vote> {
        let key = (phase, view, seq);
        if let Some(previous) = self.get(phase, view, seq) {
            if previous.digest == digest {
                return Some(previous.clone());
            }
            metrics.refused_to_equivocate += 1;
            return None;
        }
        if self.withholds(phase, view) {
            metrics.withheld_in_recovery += 1;
            return None;
        }
        metrics.signatures_created += 1;
        let vote = Vote::new(
            &self.chain,
            self.epoch,
            phase,
            (view, seq),
            digest,
            self.id,
            &self.keypair,
        );
        self.signed.insert(key, vote.clone());
        self.note_latest(&vote);
        Some(vote)
    }

    /// Keeps `vote` as its seq's latest of the prepare phase, if it is one and from a view no
    /// lower than the one kept.
    fn note_latest(&mut self, vote: &Vote) {
        if !matches!(vote.phase, Phase::PrePrepare | Phase::Prepare) {
            return;
        }
        let newer = self
            .latest
            .get(&vote.seq)
            .is_none_or(|kept| kept.view < vote.view);
        if newer {
            self.latest.insert(vote.seq, vote.clone());
        }
    }

    /// Its latest pre-prepare or prepare at each seq above the low watermark, in seq order:
    /// what its view changes report as voted ([`crate::ViewChange::voted`]).
    pub(super) fn latest_votes(&self) -> impl Iterator<Item = &Vote> {
        self.latest.values()
    }

    /// Its latest pre-prepare or prepare at `seq`, if it keeps one.
    pub(super) fn latest_at(&self, seq: u64) -> Option<&Vote> {
        self.latest.get(&seq)
    }

    /// The key it signs with.
    pub(super) fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// Signs a statement digest that needs no index (a reply root: replies repeat freely).
    pub(super) fn sign(&self, metrics: &mut Metrics, digest: &Digest) -> Signature {
        metrics.signatures_created += 1;
        self.keypair.sign(digest)
    }

    /// Signs a view change leaving for `view`, unless it withholds signatures in that view.
    /// One per view: the caller moves only upwards.
    pub(super) fn view_change(
        &self,
        metrics: &mut Metrics,
        view: u64,
        checkpoint: StableCheckpoint,
        claims: (Vec<Prepared>, Vec<PreparedClaim>),
    ) -> Option<ViewChange> {
        let behind = self.fence.is_some_and(|f| checkpoint.seq < f.seq);
        if self.withholds(Phase::Prepare, view) || behind {
            metrics.withheld_in_recovery += 1;
            return None;
        }
        metrics.signatures_created += 1;
        Some(ViewChange::new(
            &self.chain,
            self.epoch,
            (view, self.id),
            checkpoint,
            claims,
            &self.keypair,
        ))
    }

    /// Signs a new view whose proposals this signer signed through [`Signer::vote`] (so it
    /// does not withhold signatures in its view).
    pub(super) fn new_view(&self, metrics: &mut Metrics, new_view: &mut NewView) {
        metrics.signatures_created += 1;
        let digest = new_view.signed_digest(&self.chain, self.epoch);
        new_view.signature = self.keypair.sign(&digest);
    }

    /// Takes back a vote signed before a restart; the first one for a statement stays.
    pub(super) fn remember(&mut self, vote: Vote) {
        self.note_latest(&vote);
        self.signed
            .entry((vote.phase, vote.view, vote.seq))
            .or_insert(vote);
    }

    /// Takes a vote this replica signed that a peer held and its log had lost, so it never
    /// signs another digest for that statement. Not into the latest votes its view changes
    /// report: it may not hold the batch.
    pub(super) fn remember_lost(&mut self, vote: Vote) {
        let key = (vote.phase, vote.view, vote.seq);
        if !self.signed.contains_key(&key) {
            self.lost.entry(key).or_insert(vote);
        }
    }

    /// The lost votes it keeps ([`Signer::remember_lost`]), by statement.
    pub(super) fn lost_votes(&self) -> impl Iterator<Item = &Vote> {
        self.lost.values()
    }

    /// What it holds signed, by statement and digest: what rollback protection compares the
    /// peers' answers with, taken before they can move the watermark.
    pub(super) fn statements(&self) -> BTreeSet<(Phase, u64, u64, Digest)> {
        self.votes()
            .chain(self.lost.values())
            .map(|vote| (vote.phase, vote.view, vote.seq, vote.digest))
            .collect()
    }

    /// The vote signed for a statement, if any (a lost one too).
    pub(super) fn get(&self, phase: Phase, view: u64, seq: u64) -> Option<&Vote> {
        let key = (phase, view, seq);
        self.signed.get(&key).or_else(|| self.lost.get(&key))
    }

    /// Every vote of its log held, by statement, then the latest of each seq (some of them
    /// again); not the lost ones.
    pub(super) fn votes(&self) -> impl Iterator<Item = &Vote> {
        self.signed.values().chain(self.latest.values())
    }

    /// The highest seq proposed (pre-prepare signed) in `view`, 0 without one.
    pub(super) fn highest_proposal(&self, view: u64) -> u64 {
        self.signed
            .keys()
            .chain(self.lost.keys())
            .filter(|(phase, signed_view, _)| *phase == Phase::PrePrepare && *signed_view == view)
            .map(|&(_, _, seq)| seq)
            .max()
            .unwrap_or(0)
    }

    /// Forgets votes at or below `seq` (the low watermark): nothing there is signed again.
    pub(super) fn forget_through(&mut self, seq: u64) {
        self.signed
            .retain(|&(_, _, signed_seq), _| signed_seq > seq);
        self.lost.retain(|&(_, _, lost_seq), _| lost_seq > seq);
        self.latest.retain(|&voted_seq, _| voted_seq > seq);
    }

    /// On entering `view` from a new view that proposes `proposals` (seq → digest), forgets
    /// the latest votes of earlier views for any other digest (above the proposals' last seq
    /// too): none of those batches committed in an earlier view (the plan would have taken
    /// it), entering drops their batches, and a vote reported without its batch could make a
    /// later view re-propose a batch no honest validator holds. Forgetting a vote for a batch
    /// that never committed costs no safety: the view change argument needs only the votes
    /// for committed ones.
    pub(super) fn forget_votes_left(&mut self, view: u64, proposals: &BTreeMap<u64, Digest>) {
        self.latest
            .retain(|seq, vote| vote.view >= view || proposals.get(seq) == Some(&vote.digest));
    }

    /// Forgets the votes of views below `view` (checkpoints have no view and stay): nothing
    /// is signed in a view once it is left. The latest vote of each seq stays.
    pub(super) fn leave_views_below(&mut self, view: u64) {
        let current = |&(phase, signed_view, _): &Statement, _: &mut Vote| {
            phase == Phase::Checkpoint || signed_view >= view
        };
        self.signed.retain(current);
        self.lost.retain(current);
    }

    /// Votes held.
    pub(super) fn len(&self) -> usize {
        self.signed.len() + self.latest.len() + self.lost.len()
    }
}

impl Replica {
    /// Whether [`Replica::sign_vote`] would sign this vote: it agrees with what this replica
    /// executed and with what it signed for the statement before.
    pub(super) fn may_sign_vote(&self, phase: Phase, seq: u64, digest: Digest) -> bool {
        self.agrees_with_executed(seq, digest)
            && !self.signer.withholds(phase, self.view)
            && self
                .signer
                .get(phase, self.view, seq)
                .is_none_or(|signed| signed.digest == digest)
    }

    /// Signs a vote of the current view, unless it contradicts what this replica executed.
    pub(super) fn sign_vote(&mut self, phase: Phase, seq: u64, digest: Digest) -> Option<Vote> {
        if !self.agrees_with_executed(seq, digest) {
            self.metrics.refused_to_equivocate += 1;
            return None;
        }
        let vote = self
            .signer
            .vote(&mut self.metrics, phase, (self.view, seq), digest)?;
        if matches!(phase, Phase::PrePrepare | Phase::Prepare)
            && self.kept.get(&seq).is_some_and(|(p, _)| p.digest != digest)
        {
            // The latest vote there is now this one, whose batch the log holds.
            self.kept.remove(&seq);
        }
        Some(vote)
    }

    /// Signs a prepare or commit, persists it, then broadcasts it and counts it locally.
    /// The order is the durability contract: the record precedes the send.
    pub(super) fn cast(&mut self, phase: Phase, seq: u64, digest: Digest) {
        self.cast_after(phase, seq, digest, None);
    }

    /// [`Replica::cast`], persisting `accepted` (the pre-prepare voted for, with its batch)
    /// just before the vote when the vote is signed.
    pub(super) fn cast_after(
        &mut self,
        phase: Phase,
        seq: u64,
        digest: Digest,
        accepted: Option<Record>,
    ) {
        if seq <= self.checkpoints.stable().seq {
            // Every slot at or below the stable checkpoint is final: there is nothing left to
            // vote on, and a replica restored from its records (which keep no votes down
            // there) must not be led into a vote for another digest.
            self.metrics.refused_to_equivocate += 1;
            return;
        }
        let Some(vote) = self.sign_vote(phase, seq, digest) else {
            return;
        };
        let logs_batch = accepted.is_some();
        if let Some(record) = accepted {
            self.outbox.persist(record);
        }
        self.publish(Record::Signed(vote.clone()), &Message::Vote(vote.clone()));
        if let Some(slot) = self.log.get_mut(&seq) {
            slot.batch_logged |= logs_batch;
            slot.add_vote(vote);
        }
    }

    /// Whether a vote for `digest` at `seq` agrees with what this replica executed: at or
    /// below its executed seq only the digest its QC there certifies, and nothing where it no
    /// longer holds that QC. After a restart the signed index is gone below the stable
    /// checkpoint, but the executed batches (from the host's store) still say what committed.
    fn agrees_with_executed(&self, seq: u64, digest: Digest) -> bool {
        let certified = match self.log.get(&seq) {
            Some(slot) => slot.certificate.as_ref().map(|qc| qc.digest),
            None => self
                .archive
                .iter()
                .rev()
                .find(|committed| committed.certificate.seq == seq)
                .map(|committed| committed.certificate.digest),
        };
        match certified {
            Some(certified) => certified == digest,
            // At or below the stable checkpoint the only signature asked for is a new view's
            // re-proposal, which every replica checks against the view changes; prepares and
            // commits there are refused in `cast`.
            None => seq > self.executed || seq <= self.checkpoints.stable().seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(
            Keypair::from_seed(&[1; 32]),
            ReplicaId(0),
            ChainId::from_name("test"),
            0,
        )
    }

    #[test]
    fn never_signs_two_digests_for_one_statement() {
        let mut metrics = Metrics::default();
        let mut signer = signer();
        let first = signer
            .vote(&mut metrics, Phase::Prepare, (1, 5), Digest([1; 32]))
            .expect("first vote");
        assert_eq!(
            signer.vote(&mut metrics, Phase::Prepare, (1, 5), Digest([1; 32])),
            Some(first),
            "the same vote again, not a second signature"
        );
        assert_eq!(
            signer.vote(&mut metrics, Phase::Prepare, (1, 5), Digest([2; 32])),
            None
        );
        assert_eq!(metrics.signatures_created, 1);
        assert_eq!(metrics.refused_to_equivocate, 1);
        // Another phase or view is another statement.
        assert!(
            signer
                .vote(&mut metrics, Phase::Commit, (1, 5), Digest([2; 32]))
                .is_some()
        );
        assert!(
            signer
                .vote(&mut metrics, Phase::Prepare, (2, 5), Digest([2; 32]))
                .is_some()
        );
    }

    #[test]
    fn a_remembered_vote_binds_like_a_signed_one() {
        let mut metrics = Metrics::default();
        let mut before = signer();
        let vote = before
            .vote(&mut metrics, Phase::Commit, (3, 9), Digest([7; 32]))
            .expect("vote");
        let mut restored = signer();
        restored.remember(vote.clone());
        assert_eq!(
            restored.vote(&mut metrics, Phase::Commit, (3, 9), Digest([8; 32])),
            None
        );
        assert_eq!(
            restored.vote(&mut metrics, Phase::Commit, (3, 9), Digest([7; 32])),
            Some(vote)
        );
    }

    #[test]
    fn forgets_below_the_watermark_and_views_left_but_keeps_checkpoints_and_latest_votes() {
        let mut metrics = Metrics::default();
        let mut signer = signer();
        for (phase, view, seq) in [
            (Phase::PrePrepare, 1, 4),
            (Phase::Prepare, 1, 8),
            (Phase::Checkpoint, 0, 10),
            (Phase::PrePrepare, 2, 12),
        ] {
            signer.vote(&mut metrics, phase, (view, seq), Digest([1; 32]));
        }
        assert_eq!(signer.highest_proposal(1), 4);
        assert_eq!(signer.highest_proposal(2), 12);
        signer.forget_through(4);
        signer.leave_views_below(2);
        let left: Vec<_> = signer.votes().map(|v| (v.phase, v.view, v.seq)).collect();
        assert_eq!(
            left,
            [
                (Phase::PrePrepare, 2, 12),
                (Phase::Checkpoint, 0, 10),
                // The latest vote of the prepare phase at each seq above the watermark, from
                // a view left or not: a view change reports it.
                (Phase::Prepare, 1, 8),
                (Phase::PrePrepare, 2, 12),
            ]
        );
        let latest: Vec<_> = signer.latest_votes().map(|v| (v.view, v.seq)).collect();
        assert_eq!(latest, [(1, 8), (2, 12)]);
    }

    #[test]
    fn entering_a_view_forgets_older_votes_for_batches_it_does_not_propose() {
        let mut metrics = Metrics::default();
        let mut current = signer();
        for (view, seq) in [(1, 3), (1, 7), (2, 9)] {
            current.vote(&mut metrics, Phase::Prepare, (view, seq), Digest([1; 32]));
        }
        // View 2 re-proposes the same batch at seq 3 and ends its proposals there.
        current.forget_votes_left(2, &BTreeMap::from([(3, Digest([1; 32]))]));
        let latest: Vec<_> = current.latest_votes().map(|v| (v.view, v.seq)).collect();
        assert_eq!(latest, [(1, 3), (2, 9)]);
        // View 3 proposes another batch at 3 and the same at 9: the vote at 3 goes.
        let proposals = BTreeMap::from([(3, Digest([2; 32])), (9, Digest([1; 32]))]);
        current.forget_votes_left(3, &proposals);
        let latest: Vec<_> = current.latest_votes().map(|v| (v.view, v.seq)).collect();
        assert_eq!(latest, [(2, 9)]);
    }

    #[test]
    fn the_latest_vote_of_a_seq_is_its_highest_views_also_when_remembered_out_of_order() {
        let mut metrics = Metrics::default();
        let mut current = signer();
        let later = current
            .vote(&mut metrics, Phase::Prepare, (3, 5), Digest([3; 32]))
            .expect("vote");
        let mut older = signer();
        let earlier = older
            .vote(&mut metrics, Phase::PrePrepare, (1, 5), Digest([1; 32]))
            .expect("vote");
        current.remember(earlier);
        // Commits are not votes of the prepare phase.
        current.vote(&mut metrics, Phase::Commit, (4, 5), Digest([4; 32]));
        let latest: Vec<_> = current.latest_votes().cloned().collect();
        assert_eq!(latest, [later]);
    }
}
