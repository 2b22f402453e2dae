//! One slot of the log: the accepted proposal and the votes on it, counted into certificates.
//!
//! The vote keeper of this replica: it stores at most one vote per validator and phase, and
//! reports a second, different vote as equivocation.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::certificate::{Evidence, QuorumCertificate};
use crate::config::{ChainId, ReplicaId};
use crate::crypto::{Digest, PublicKey};
use crate::message::{COMMITTED, HAVE_BATCH, PREPARED};
use crate::statement::{Batch, Phase, Vote};
use crate::view_change::Prepared;

/// What adding a vote did.
pub(crate) enum VoteOutcome {
    /// Stored.
    Added,
    /// The same vote was already stored.
    Duplicate,
    /// The validator had voted for another digest; the first vote stays.
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
    /// Once delivered: (client, number) of each request the host executes, in order.
    pub(crate) executing: Vec<(PublicKey, u64)>,
}

impl Slot {
    /// Whether the same vote (signer, phase, digest) is stored: a duplicate needs no check.
    pub(crate) fn has_same(&self, vote: &Vote) -> bool {
        self.votes(vote.phase)
            .and_then(|votes| votes.get(&vote.replica))
            .is_some_and(|stored| stored.digest == vote.digest)
    }

    fn votes(&self, phase: Phase) -> Option<&BTreeMap<ReplicaId, Vote>> {
        match phase {
            Phase::Prepare => Some(&self.prepares),
            Phase::Commit => Some(&self.commits),
            Phase::PrePrepare | Phase::Checkpoint => None,
        }
    }

    /// Stores a verified prepare or commit vote.
    pub(crate) fn add_vote(&mut self, vote: Vote) -> VoteOutcome {
        let votes = match vote.phase {
            Phase::Prepare => &mut self.prepares,
            Phase::Commit => &mut self.commits,
            Phase::PrePrepare | Phase::Checkpoint => return VoteOutcome::Duplicate,
        };
        match votes.get(&vote.replica) {
            Some(stored) if stored.digest == vote.digest => VoteOutcome::Duplicate,
            Some(stored) => VoteOutcome::Conflict(stored.clone()),
            None => {
                votes.insert(vote.replica, vote);
                VoteOutcome::Added
            }
        }
    }

    /// Evidence for a conflict, unless this validator was already reported here.
    pub(crate) fn evidence(&mut self, epoch: u64, first: Vote, second: Vote) -> Option<Evidence> {
        let key = (second.phase, second.replica);
        if self.reported.contains(&key) {
            return None;
        }
        self.reported.push(key);
        Some(Evidence {
            epoch,
            first,
            second,
        })
    }

    fn matching(&self, phase: Phase) -> impl Iterator<Item = &Vote> {
        let digest = self.digest;
        self.votes(phase)
            .into_iter()
            .flat_map(|votes| votes.values())
            .filter(move |vote| Some(vote.digest) == digest)
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

    /// The QC, if a quorum of matching commits is in (ascending signer order).
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
    /// `batch` is the batch when the proposal brings it (the null batch); otherwise a batch
    /// this slot already holds for the same digest is kept, or it is fetched later.
    pub(crate) fn repropose(&mut self, proposal: Vote, batch: Option<Batch>) {
        if self
            .certificate
            .as_ref()
            .is_some_and(|qc| qc.digest != proposal.digest)
        {
            self.certificate = None;
        }
        let keep = self.digest == Some(proposal.digest) && self.batch.is_some();
        if !keep {
            self.batch = batch;
            self.leaves.clear();
            self.batch_logged = false;
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
