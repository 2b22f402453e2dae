//! One slot of the log: the accepted proposal and the votes on it, counted into certificates.
//!
//! The vote keeper of this replica: it stores at most one vote per validator and phase, and
//! reports a second, different vote as equivocation.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::certificate::{CommitPath, QuorumCertificate, conflicting};
use crate::config::{ChainId, ReplicaId};
use crate::crypto::{Digest, PublicKey};
use crate::message::{COMMITTED, HAVE_BATCH, PREPARED};
use crate::statement::Evidence;
use crate::statement::{Batch, Phase, Vote};
use crate::view_change::Prepared;

/// What adding a vote did.
pub(crate) enum VoteOutcome {
    /// Stored.
    Added,
    /// The same vote was already stored, or the validator's vote of a later view.
    Duplicate,
    /// The validator had voted for another digest in the same view; the first vote stays.
    Conflict(Vote),
}

/// A sequence number in the window: its proposal and votes in the current view, and what
/// outlives a view (the latest prepared certificate, the QC, the batch).
#[derive(Default)]
pub(crate) struct Slot {
    /// The proposal's digest, once a valid pre-prepare was accepted.
    pub(crate) digest: Option<Digest>,
    /// The primary's signed proposal.
    pub(crate) proposal: Option<Vote>,
    /// The batch, once known (kept after delivery to serve peers that are behind).
    pub(crate) batch: Option<Batch>,
    /// Request digests of the batch, to release them from the duplicate index.
    pub(crate) leaves: Vec<Digest>,
    /// Each validator's prepare and commit of the latest view it voted in here. Only the
    /// votes of the proposal's view count towards its certificates.
    prepares: BTreeMap<ReplicaId, Vote>,
    commits: BTreeMap<ReplicaId, Vote>,
    /// Validators already reported for equivocating here (evidence is sent once).
    reported: Vec<(Phase, ReplicaId)>,
    /// This replica sent its commit in the current view.
    pub(crate) commit_sent: bool,
    /// A `Prepared` record of this slot carried its batch (a redo record need not).
    pub(crate) batch_logged: bool,
    /// The certificate of the highest view this slot prepared in, for view changes.
    pub(crate) prepared: Option<Prepared>,
    /// The QC, once a quorum committed.
    pub(crate) certificate: Option<QuorumCertificate>,
    /// Once delivered: (client, number, digest) of each request the host executes, in order.
    pub(crate) executing: Vec<(PublicKey, u64, crate::crypto::Digest)>,
    /// Once delivered: the results this replica decided itself (reconfigurations, which the
    /// host does not execute), by position in `executing`.
    pub(crate) decided: Vec<(usize, Vec<u8>)>,
}

impl Slot {
    /// Whether the same vote (signer, phase, view, digest) is stored: a duplicate needs no
    /// check.
    pub(crate) fn has_same(&self, vote: &Vote) -> bool {
        self.votes(vote.phase)
            .and_then(|votes| votes.get(&vote.replica))
            .is_some_and(|stored| (stored.view, stored.digest) == (vote.view, vote.digest))
    }

    /// The votes `id` signed that this slot holds: its proposal (as the primary), its
    /// prepare and its commit, and those in the slot's prepared certificate (of an earlier
    /// view, maybe).
    pub(crate) fn signed_by(&self, id: ReplicaId) -> impl Iterator<Item = &Vote> {
        let certified = self
            .prepared
            .iter()
            .flat_map(|prepared| core::iter::once(&prepared.proposal).chain(&prepared.prepares));
        self.proposal
            .iter()
            .chain(self.prepares.get(&id))
            .chain(self.commits.get(&id))
            .chain(certified)
            .filter(move |vote| vote.replica == id)
    }

    fn votes(&self, phase: Phase) -> Option<&BTreeMap<ReplicaId, Vote>> {
        match phase {
            Phase::Prepare => Some(&self.prepares),
            Phase::Commit => Some(&self.commits),
            Phase::PrePrepare | Phase::Checkpoint => None,
        }
    }

    /// Stores a verified prepare or commit vote. A vote of a later view than the one stored
    /// for its signer replaces it (a new view may order another digest here); two digests in
    /// one view are a conflict.
    pub(crate) fn add_vote(&mut self, vote: Vote) -> VoteOutcome {
        let votes = match vote.phase {
            Phase::Prepare => &mut self.prepares,
            Phase::Commit => &mut self.commits,
            Phase::PrePrepare | Phase::Checkpoint => return VoteOutcome::Duplicate,
        };
        match votes.get(&vote.replica) {
            Some(stored) if stored.view > vote.view => VoteOutcome::Duplicate,
            Some(stored) if stored.view == vote.view && stored.digest == vote.digest => {
                VoteOutcome::Duplicate
            }
            Some(stored) if stored.view == vote.view => VoteOutcome::Conflict(stored.clone()),
            _ => {
                votes.insert(vote.replica, vote);
                VoteOutcome::Added
            }
        }
    }

    /// Evidence for a conflict, unless this validator was already reported here, or the two
    /// votes are not two digests for one statement ([`crate::certificate::conflicting`]).
    pub(crate) fn evidence(&mut self, epoch: u64, first: Vote, second: Vote) -> Option<Evidence> {
        let key = (second.phase, second.replica);
        if self.reported.contains(&key) || !conflicting(&first, &second) {
            return None;
        }
        self.reported.push(key);
        Some(Evidence {
            epoch,
            first,
            second,
        })
    }

    /// The votes of `phase` for the accepted proposal: its view and its digest. Votes of
    /// another view never count, so a certificate never mixes views.
    fn matching(&self, phase: Phase) -> impl Iterator<Item = &Vote> {
        let statement = self.proposal.as_ref().map(|p| (p.view, p.digest));
        self.votes(phase)
            .into_iter()
            .flat_map(|votes| votes.values())
            .filter(move |vote| Some((vote.view, vote.digest)) == statement)
    }

    /// Prepared: the proposal plus `quorum - 1` matching prepares from backups, so a
    /// quorum vouches for the batch at this slot.
    pub(crate) fn is_prepared(&self, quorum: usize, primary: ReplicaId) -> bool {
        self.proposal.is_some()
            && self
                .matching(Phase::Prepare)
                .filter(|vote| vote.replica != primary)
                .count()
                + 1
                >= quorum
    }

    /// Takes the QC once it can be formed: from a quorum of commits, or, when `fast_path`
    /// holds the number of validators, from every validator's vote of the prepare phase.
    /// Returns the path it came by.
    pub(crate) fn certify(
        &mut self,
        (chain, epoch): (ChainId, u64),
        seq: u64,
        quorum: usize,
        fast_path: Option<usize>,
    ) -> Option<CommitPath> {
        let certificate = self
            .commit_certificate(chain, epoch, seq, quorum)
            .or_else(|| fast_path.and_then(|n| self.fast_certificate((chain, epoch), seq, n)));
        let path = certificate.as_ref().map(|qc| qc.path);
        self.certificate = certificate;
        path
    }

    /// The QC, if a quorum of commits for the proposal's view and digest is in (ascending
    /// signer order).
    pub(crate) fn commit_certificate(
        &self,
        chain: ChainId,
        epoch: u64,
        seq: u64,
        quorum: usize,
    ) -> Option<QuorumCertificate> {
        let proposal = self.proposal.as_ref()?;
        let signatures: Vec<_> = self
            .matching(Phase::Commit)
            .take(quorum)
            .map(|vote| (vote.replica, vote.signature))
            .collect();
        (signatures.len() >= quorum).then_some(QuorumCertificate {
            chain_id: chain,
            epoch,
            view: proposal.view,
            seq,
            digest: proposal.digest,
            path: CommitPath::ThreePhase,
            signatures,
        })
    }

    /// The fast-path QC, if the proposal and a matching prepare from each of the other
    /// `validators - 1` validators are in: every validator voted for the batch in this view.
    pub(crate) fn fast_certificate(
        &self,
        (chain, epoch): (ChainId, u64),
        seq: u64,
        validators: usize,
    ) -> Option<QuorumCertificate> {
        let proposal = self.proposal.as_ref()?;
        let mut signatures: Vec<(ReplicaId, _)> = self
            .matching(Phase::Prepare)
            .filter(|vote| vote.replica != proposal.replica)
            .map(|vote| (vote.replica, vote.signature))
            .collect();
        if signatures.len() + 1 != validators {
            return None;
        }
        signatures.push((proposal.replica, proposal.signature));
        signatures.sort_unstable_by_key(|(signer, _)| *signer);
        Some(QuorumCertificate {
            chain_id: chain,
            epoch,
            view: proposal.view,
            seq,
            digest: proposal.digest,
            path: CommitPath::Fast,
            signatures,
        })
    }

    /// The prepared certificate for the current proposal: it plus `quorum - 1` matching
    /// prepares from backups, in signer order.
    pub(crate) fn prepared_certificate(
        &self,
        quorum: usize,
        primary: ReplicaId,
    ) -> Option<Prepared> {
        let proposal = self.proposal.clone()?;
        let prepares: Vec<Vote> = self
            .matching(Phase::Prepare)
            .filter(|vote| vote.replica != primary && vote.digest == proposal.digest)
            .take(quorum.saturating_sub(1))
            .cloned()
            .collect();
        (prepares.len() + 1 >= quorum).then_some(Prepared { proposal, prepares })
    }

    /// This replica's own vote of `phase`, if it cast one in the current view.
    pub(crate) fn own(&self, phase: Phase, id: ReplicaId) -> Option<&Vote> {
        self.votes(phase).and_then(|votes| votes.get(&id))
    }

    /// Starts the slot over for a new view's proposal: the votes of older views no longer
    /// count; the prepared certificate, the QC and the batch (if it matches) stay.
    /// A batch this slot already holds for the proposal's digest is kept; otherwise `batch`
    /// takes its place: the null batch, or one a record of this replica holds (fetched, kept
    /// or restored), whose request digests are computed under `chain`; or none, and it is
    /// fetched later.
    pub(crate) fn repropose(&mut self, chain: &ChainId, proposal: Vote, batch: Option<Batch>) {
        if self
            .certificate
            .as_ref()
            .is_some_and(|qc| qc.digest != proposal.digest)
        {
            self.certificate = None;
        }
        let keep = self.digest == Some(proposal.digest) && self.batch.is_some();
        if !keep {
            self.leaves = batch.as_ref().map_or_else(Vec::new, |b| b.leaves(chain));
            // Logged with a record already; the null batch needs none.
            self.batch_logged = batch.as_ref().is_some_and(|b| !b.is_empty());
            self.batch = batch;
        }
        self.digest = Some(proposal.digest);
        self.proposal = Some(proposal);
        self.prepares.clear();
        self.commits.clear();
        self.reported.clear();
        self.commit_sent = false;
    }

    /// A QC for another digest than the accepted proposal's came in: the proposal and this
    /// view's votes are dropped, and the commit counts as sent (the slot is decided).
    pub(crate) fn repropose_committed(&mut self) {
        self.proposal = None;
        self.prepares.clear();
        self.commits.clear();
        self.commit_sent = true;
    }

    /// This slot's flags for a [`crate::Status`].
    pub(crate) fn flags(&self, quorum: usize) -> u8 {
        let mut flags = 0;
        if self.proposal.is_some() && self.batch.is_some() {
            flags |= HAVE_BATCH;
        }
        let primary = self.proposal.as_ref().map(|p| p.replica);
        if primary.is_some_and(|primary| self.is_prepared(quorum, primary)) {
            flags |= PREPARED;
        }
        if self.certificate.is_some() && self.batch.is_some() {
            flags |= COMMITTED;
        }
        flags
    }

    /// Votes held, for memory accounting.
    pub(crate) fn vote_count(&self) -> usize {
        self.prepares.len() + self.commits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    fn vote(phase: Phase, replica: u16, view: u64, digest: u8) -> Vote {
        Vote::new(
            &ChainId::from_name("test"),
            0,
            phase,
            (view, 1),
            Digest([digest; 32]),
            ReplicaId(replica),
            &Keypair::from_seed(&[replica as u8 + 1; 32]),
        )
    }

    #[test]
    fn a_later_views_vote_replaces_the_old_one_and_only_one_view_counts() {
        let mut slot = Slot::default();
        assert!(matches!(
            slot.add_vote(vote(Phase::Commit, 1, 0, 1)),
            VoteOutcome::Added
        ));
        // Another digest in a later view: a new vote, not a conflict.
        assert!(matches!(
            slot.add_vote(vote(Phase::Commit, 1, 1, 2)),
            VoteOutcome::Added
        ));
        // An older view's vote no longer counts; the same view with another digest conflicts.
        assert!(matches!(
            slot.add_vote(vote(Phase::Commit, 1, 0, 3)),
            VoteOutcome::Duplicate
        ));
        assert!(matches!(
            slot.add_vote(vote(Phase::Commit, 1, 1, 3)),
            VoteOutcome::Conflict(first) if (first.view, first.digest) == (1, Digest([2; 32]))
        ));
        // Commits of views 0 and 1 for one digest never make one QC.
        slot.add_vote(vote(Phase::Commit, 2, 0, 2));
        slot.add_vote(vote(Phase::Commit, 3, 1, 2));
        slot.proposal = Some(vote(Phase::PrePrepare, 1, 1, 2));
        let chain = ChainId::from_name("test");
        assert_eq!(slot.commit_certificate(chain, 0, 1, 3), None);
        slot.add_vote(vote(Phase::Commit, 2, 1, 2));
        let qc = slot
            .commit_certificate(chain, 0, 1, 3)
            .expect("three of view 1");
        assert_eq!(qc.view, 1);
    }

    #[test]
    fn evidence_is_made_only_from_two_digests_for_one_statement() {
        let mut slot = Slot::default();
        let first = vote(Phase::Commit, 1, 1, 1);
        assert_eq!(
            slot.evidence(0, first.clone(), vote(Phase::Commit, 1, 2, 2)),
            None
        );
        assert_eq!(
            slot.evidence(0, first.clone(), vote(Phase::Commit, 2, 1, 2)),
            None
        );
        assert_eq!(slot.evidence(0, first.clone(), first.clone()), None);
        let second = vote(Phase::Commit, 1, 1, 2);
        assert!(slot.evidence(0, first.clone(), second.clone()).is_some());
        assert_eq!(slot.evidence(0, first, second), None, "reported once");
    }
}
