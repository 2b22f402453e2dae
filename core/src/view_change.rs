//! View change: the messages that replace a primary, and the checks every replica runs on
//! them before it follows a new one.
//!
//! A backup that gives up on view v - 1 signs a [`ViewChange`] for v carrying its latest
//! [`StableCheckpoint`] and a [`Prepared`] certificate for every sequence number above it that
//! it prepared (the one from the highest view). The primary of v gathers a quorum of them and
//! signs a [`NewView`]: the view changes, plus a pre-prepare for every sequence number between
//! the highest checkpoint among them (`min_s`) and the highest prepared sequence number
//! (`max_s`) — the batch of the highest-view prepared certificate for that number, or the empty
//! (null) batch where there is none. Nothing in a `NewView` is taken on trust: every replica
//! recomputes the pre-prepares from the view changes with [`plan`] and refuses a `NewView` whose
//! proposals differ ([`verify_new_view`]).
//!
//! # Why a batch committed in view v is re-proposed in every later view
//!
//! Suppose batch B commits at sequence s in view v at some honest replica. Its commit
//! certificate needs a quorum of commits, and an honest replica commits only once prepared, so
//! a quorum Q1 prepared (B, s) in view v, and at least f + 1 of Q1 are honest. Take the first
//! view w > v whose `NewView` is accepted. Its quorum Q2 of view changes meets Q1 in at least
//! f + 1 validators, hence in an honest one, h. An honest replica signs a view change for w
//! only after it stopped taking part in earlier views, so h prepared B in view v before signing
//! and its view change for w carries a prepared certificate for s from view v or later — unless
//! s is at or below h's stable checkpoint, and then s is at or below `min_s` and no new batch is
//! proposed for s at all. A prepared certificate for s from a view u with v ≤ u < w can only be
//! for B: in u = v two quorums that prepared different batches would share an honest replica
//! that prepared both, which it never does; for v < u < w, induction on the views between v and
//! w says every view's `NewView` re-proposed B at s, so nothing else could prepare there. So the
//! highest-view certificate for s in Q2 is for B (certificates from views below v lose to it),
//! and view w re-proposes B at s. Induction over views gives every later view. Each replica
//! checks the `NewView` itself, so a Byzantine primary cannot skip the rule: it can only fail to
//! produce a valid `NewView`, which costs liveness until the next view, never safety.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::certificate::{CertificateError, queue_quorum};
use crate::config::{ChainId, ReplicaId, ValidatorSet};
use crate::crypto::{BatchVerifier, CryptoError, Digest, Hasher, Keypair, Signature};
use crate::statement::{Batch, Phase, Vote, vote_digest};

/// Proof that a quorum executed the same history up to `seq`: the checkpoint everything
/// below which is final and may be forgotten. Sequence 0 is the genesis, which needs no
/// signatures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableCheckpoint {
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// The digest every signer reported at `seq`.
    pub digest: Digest,
    /// Checkpoint signatures, in strictly increasing signer order.
    pub signatures: Vec<(ReplicaId, Signature)>,
}

impl StableCheckpoint {
    /// The checkpoint every replica starts from.
    pub fn genesis() -> Self {
        StableCheckpoint::default()
    }

    fn queue(
        &self,
        chain: &ChainId,
        validators: &ValidatorSet,
        verifier: &mut BatchVerifier,
    ) -> Result<(), CertificateError> {
        if self.seq == 0 {
            return match *self == Self::genesis() {
                true => Ok(()),
                false => Err(CertificateError::BadSignature),
            };
        }
        let signed = vote_digest(
            chain,
            validators.epoch(),
            Phase::Checkpoint,
            0,
            self.seq,
            &self.digest,
        );
        queue_quorum(validators, &signed, &self.signatures, verifier)
    }
}

/// Checks a stable checkpoint certificate with nothing but the chain id and validator set.
pub fn verify_checkpoint(
    chain: &ChainId,
    validators: &ValidatorSet,
    checkpoint: &StableCheckpoint,
) -> Result<(), CertificateError> {
    let mut verifier = BatchVerifier::new();
    checkpoint.queue(chain, validators, &mut verifier)?;
    verifier
        .verify()
        .map_err(|_| CertificateError::BadSignature)
}

/// Proof that a batch prepared at a slot: the primary's pre-prepare and a quorum-less-one of
/// matching prepares from distinct backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// The pre-prepare vote of the primary of `proposal.view`.
    pub proposal: Vote,
    /// Prepares for the same (view, seq, digest), in strictly increasing signer order.
    pub prepares: Vec<Vote>,
}

/// A validator's signed statement that it moves to `view`, with what it must carry over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view the signer moves to.
    pub view: u64,
    /// The signer.
    pub replica: ReplicaId,
    /// The signer's latest stable checkpoint.
    pub checkpoint: StableCheckpoint,
    /// A certificate for every sequence number above the checkpoint the signer prepared, in
    /// increasing sequence order, each from the highest view it prepared in.
    pub prepared: Vec<Prepared>,
    /// Signature over [`ViewChange::signed_digest`].
    pub signature: Signature,
}

impl ViewChange {
    /// Builds and signs a view change.
    pub fn new(
        chain: &ChainId,
        epoch: u64,
        (view, replica): (u64, ReplicaId),
        checkpoint: StableCheckpoint,
        prepared: Vec<Prepared>,
        keypair: &Keypair,
    ) -> Self {
        let mut change = ViewChange {
            view,
            replica,
            checkpoint,
            prepared,
            signature: Signature([0; 64]),
        };
        change.signature = keypair.sign(&change.signed_digest(chain, epoch));
        change
    }

    /// What the signature covers: the view, the signer, the checkpoint and each certificate's
    /// (seq, view, digest). The certificates' own signatures authenticate the rest.
    pub fn signed_digest(&self, chain: &ChainId, epoch: u64) -> Digest {
        let mut hasher = Hasher::new(b"pbft/v1/view-change");
        hasher
            .digest(&chain.0)
            .u64(epoch)
            .u64(self.view)
            .u64(u64::from(self.replica.0))
            .u64(self.checkpoint.seq)
            .digest(&self.checkpoint.digest)
            .u64(self.prepared.len() as u64);
        for prepared in &self.prepared {
            let proposal = &prepared.proposal;
            hasher
                .u64(proposal.seq)
                .u64(proposal.view)
                .digest(&proposal.digest);
        }
        hasher.finish()
    }
}

/// The new primary's signed start of `view`: the view changes it gathered and its
/// pre-prepares for the slots they leave open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The view that starts.
    pub view: u64,
    /// A quorum of view changes for `view`, in strictly increasing signer order.
    pub view_changes: Vec<ViewChange>,
    /// Pre-prepare votes of the primary of `view` for every seq in (`min_s`, `max_s`].
    pub proposals: Vec<Vote>,
    /// The primary's signature over [`NewView::signed_digest`].
    pub signature: Signature,
}

impl NewView {
    /// What the primary signs: the view, each view change's signed digest and the proposals.
    pub fn signed_digest(&self, chain: &ChainId, epoch: u64) -> Digest {
        let mut hasher = Hasher::new(b"pbft/v1/new-view");
        hasher
            .digest(&chain.0)
            .u64(epoch)
            .u64(self.view)
            .u64(self.view_changes.len() as u64);
        for change in &self.view_changes {
            hasher.digest(&change.signed_digest(chain, epoch));
        }
        hasher.u64(self.proposals.len() as u64);
        for proposal in &self.proposals {
            hasher.u64(proposal.seq).digest(&proposal.digest);
        }
        hasher.finish()
    }
}

/// Why a view change or a new view is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewChangeError {
    /// View 0 has no view change; or a view change inside a new view is for another view.
    #[error("view change for the wrong view")]
    WrongView,
    /// The signer of a view change or new view is not who may sign it.
    #[error("signed by {0}, who may not sign it")]
    WrongSigner(ReplicaId),
    /// The stable checkpoint does not verify.
    #[error("stable checkpoint: {0}")]
    Checkpoint(CertificateError),
    /// A prepared certificate is malformed (wrong phase, view, signer, count, order or range);
    /// the number is its sequence number.
    #[error("malformed prepared certificate at seq {0}")]
    BadPrepared(u64),
    /// A new view carries fewer distinct view changes than a quorum.
    #[error("{got} view changes, a quorum is {needed}")]
    TooFewViewChanges {
        /// Distinct view changes present.
        got: usize,
        /// The quorum.
        needed: usize,
    },
    /// View changes are repeated or out of signer order.
    #[error("view change of {0} repeated or out of order")]
    DuplicateViewChange(ReplicaId),
    /// The proposals differ from those the view changes determine, at this sequence number
    /// (a prepared batch omitted or replaced, a gap not filled with the null batch, or a
    /// proposal too many or too few).
    #[error("proposal at seq {0} is not what the view changes determine")]
    WrongProposal(u64),
    /// At least one signature does not verify.
    #[error("a signature does not verify")]
    BadSignature,
}

impl From<CryptoError> for ViewChangeError {
    fn from(_: CryptoError) -> Self {
        ViewChangeError::BadSignature
    }
}

/// What a quorum of view changes determines: the checkpoint the new view starts from and the
/// digest to propose at each following sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The highest stable checkpoint among the view changes (`min_s`).
    pub checkpoint: StableCheckpoint,
    /// (seq, digest) for every seq in (`min_s`, `max_s`], in order.
    pub proposals: Vec<(u64, Digest)>,
}

/// The digest of the null batch, proposed where no batch may have committed.
pub fn null_digest(chain: &ChainId) -> Digest {
    Batch::default().digest(chain)
}

/// Computes the new view's starting point from view changes that each verified.
pub fn plan(chain: &ChainId, view_changes: &[ViewChange]) -> Plan {
    let checkpoint = view_changes
        .iter()
        .map(|change| &change.checkpoint)
        .max_by_key(|checkpoint| checkpoint.seq)
        .cloned()
        .unwrap_or_default();
    let min_s = checkpoint.seq;
    let mut chosen: alloc::collections::BTreeMap<u64, (u64, Digest)> = Default::default();
    for prepared in view_changes.iter().flat_map(|change| &change.prepared) {
        let proposal = &prepared.proposal;
        if proposal.seq <= min_s {
            continue;
        }
        let candidate = (proposal.view, proposal.digest);
        let best = chosen.entry(proposal.seq).or_insert(candidate);
        // Highest view wins; equal views cannot disagree between honest quorums, and the
        // digest breaks the tie so the choice never depends on the order of the input.
        *best = (*best).max(candidate);
    }
    let max_s = chosen.keys().next_back().copied().unwrap_or(min_s);
    let null = null_digest(chain);
    let proposals = (min_s + 1..=max_s)
        .map(|seq| (seq, chosen.get(&seq).map_or(null, |(_, digest)| *digest)))
        .collect();
    Plan {
        checkpoint,
        proposals,
    }
}

/// Checks a view change's structure and queues its signatures. `window` bounds how far above
/// its checkpoint a certificate may be.
fn queue_view_change(
    chain: &ChainId,
    validators: &ValidatorSet,
    window: u64,
    change: &ViewChange,
    verifier: &mut BatchVerifier,
) -> Result<(), ViewChangeError> {
    if change.view == 0 {
        return Err(ViewChangeError::WrongView);
    }
    let epoch = validators.epoch();
    let key = validators
        .key(change.replica)
        .ok_or(ViewChangeError::WrongSigner(change.replica))?;
    verifier.queue(key, &change.signed_digest(chain, epoch), &change.signature);
    change
        .checkpoint
        .queue(chain, validators, verifier)
        .map_err(ViewChangeError::Checkpoint)?;
    let low = change.checkpoint.seq;
    let mut previous_seq = low;
    for prepared in &change.prepared {
        let proposal = &prepared.proposal;
        let seq = proposal.seq;
        let primary = validators.primary(proposal.view);
        let well_formed = seq > previous_seq
            && seq <= low.saturating_add(window)
            && proposal.phase == Phase::PrePrepare
            && proposal.view < change.view
            && proposal.replica == primary
            && prepared.prepares.len() + 1 == validators.quorum();
        if !well_formed {
            return Err(ViewChangeError::BadPrepared(seq));
        }
        previous_seq = seq;
        let primary_key = validators
            .key(primary)
            .ok_or(ViewChangeError::BadPrepared(seq))?;
        verifier.queue(
            primary_key,
            &proposal.signed_digest(chain, epoch),
            &proposal.signature,
        );
        let mut previous_signer: Option<ReplicaId> = None;
        for prepare in &prepared.prepares {
            let matches = prepare.phase == Phase::Prepare
                && prepare.view == proposal.view
                && prepare.seq == seq
                && prepare.digest == proposal.digest
                && prepare.replica != primary
                && previous_signer.is_none_or(|p| p < prepare.replica);
            let key = validators.key(prepare.replica);
            let (true, Some(key)) = (matches, key) else {
                return Err(ViewChangeError::BadPrepared(seq));
            };
            previous_signer = Some(prepare.replica);
            verifier.queue(
                key,
                &prepare.signed_digest(chain, epoch),
                &prepare.signature,
            );
        }
    }
    Ok(())
}

/// Checks one view change completely: structure, checkpoint certificate, prepared
/// certificates and every signature.
pub fn verify_view_change(
    chain: &ChainId,
    validators: &ValidatorSet,
    window: u64,
    change: &ViewChange,
) -> Result<(), ViewChangeError> {
    let mut verifier = BatchVerifier::new();
    queue_view_change(chain, validators, window, change, &mut verifier)?;
    Ok(verifier.verify()?)
}

/// Checks a new view completely and returns what it starts from: a quorum of distinct, valid
/// view changes for its view, proposals equal to what [`plan`] derives from them, signed by
/// the view's primary. Signatures are checked together in one batch.
pub fn verify_new_view(
    chain: &ChainId,
    validators: &ValidatorSet,
    window: u64,
    new_view: &NewView,
) -> Result<Plan, ViewChangeError> {
    let view = new_view.view;
    let primary = validators.primary(view);
    let epoch = validators.epoch();
    let needed = validators.quorum();
    if new_view.view_changes.len() < needed {
        return Err(ViewChangeError::TooFewViewChanges {
            got: new_view.view_changes.len(),
            needed,
        });
    }
    let mut verifier = BatchVerifier::new();
    let primary_key = validators
        .key(primary)
        .ok_or(ViewChangeError::WrongSigner(primary))?;
    verifier.queue(
        primary_key,
        &new_view.signed_digest(chain, epoch),
        &new_view.signature,
    );
    let mut previous: Option<ReplicaId> = None;
    for change in &new_view.view_changes {
        if previous.is_some_and(|p| p >= change.replica) {
            return Err(ViewChangeError::DuplicateViewChange(change.replica));
        }
        previous = Some(change.replica);
        if change.view != view {
            return Err(ViewChangeError::WrongView);
        }
        queue_view_change(chain, validators, window, change, &mut verifier)?;
    }
    let plan = plan(chain, &new_view.view_changes);
    let mut proposals = new_view.proposals.iter();
    for &(seq, digest) in &plan.proposals {
        let proposal = proposals
            .next()
            .ok_or(ViewChangeError::WrongProposal(seq))?;
        let expected = proposal.phase == Phase::PrePrepare
            && proposal.view == view
            && proposal.seq == seq
            && proposal.digest == digest
            && proposal.replica == primary;
        if !expected {
            return Err(ViewChangeError::WrongProposal(seq));
        }
        verifier.queue(
            primary_key,
            &proposal.signed_digest(chain, epoch),
            &proposal.signature,
        );
    }
    if let Some(extra) = proposals.next() {
        return Err(ViewChangeError::WrongProposal(extra.seq));
    }
    verifier.verify()?;
    Ok(plan)
}
