//! View change: the messages that replace a primary, and the checks every replica runs on
//! them before it follows a new one.
//!
//! A backup that gives up on view v - 1 signs a [`ViewChange`] for v carrying its latest
//! [`StableCheckpoint`] and a [`Prepared`] certificate for every sequence number above it that
//! it prepared (the one from the highest view). Its signature covers what the certificates
//! claim (a [`ViewChangeSummary`]: the checkpoint's seq and digest, and (seq, view, digest) of
//! each certificate), not the certificates' own signatures. The primary of v gathers a quorum
//! of view changes, checks their certificates, and signs a [`NewView`](crate::NewView): the view changes as
//! summaries, the certificate of the highest checkpoint among them (`min_s`), one prepared
//! certificate for each sequence number whose batch the summaries decide, and a pre-prepare for
//! every sequence number between `min_s` and the highest prepared sequence number (`max_s`) —
//! the batch of the highest-view claim for that number, or the empty (null) batch where there
//! is none. Nothing in a `NewView` is taken on trust: every replica recomputes the pre-prepares
//! from the summaries with [`plan`](crate::plan), checks that the certificates prove what the plan takes
//! from them, and refuses a `NewView` that differs ([`verify_new_view`](crate::verify_new_view)).
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
//!
//! # Why a batch committed on the fast path is re-proposed too
//!
//! A replica may also commit B at s in view v without the commit round, once it holds the
//! pre-prepare and a matching prepare from every other validator: all n voted for B
//! (SBFT's fast path, Gueta et al. 2019). No commit certificate need exist anywhere, so the
//! argument above does not apply; the view changes carry what does. Each reports, beside its
//! certificates, its signer's latest vote of the prepare phase at every seq above its
//! checkpoint ([`ViewChange::voted`], covered by its signature and kept across views and
//! crashes). The plan scores each digest reported at s by the (f + 1)-th highest view among
//! its reports (f + 1 validators voted for it in that view or later) and sets the score
//! against the prepared claims: the higher view wins, and in one view the certificate. A
//! replica forgets a vote only when a new view it enters proposes another digest at that seq
//! or none at all, or when the seq falls below its stable checkpoint; by the argument below
//! the batch of such a vote never committed, or is covered by the checkpoint.
//!
//! Take any view w > v whose `NewView` is accepted, and suppose every view between v and w
//! re-proposed B at s. Its quorum Q2 holds at least f + 1 honest validators; each voted for
//! B at s in v and, if it voted there again, for B again (nothing else was proposed at s in
//! those views). So Q2 reports B at least f + 1 times, each from view v or later, and B
//! scores at least v, however the honest votes are spread over the views. Nothing in Q2
//! beats it: a digest scores v or more only if f + 1 validators, one of them honest, voted
//! for it in v or later, and every honest vote there is for B; a prepared certificate for
//! another batch from v or later needs a quorum of such votes; certificates and scores from
//! below v lose to view v. So w re-proposes B, and induction gives every later view. A batch
//! committed on the slow path in view v' is kept as well: Q2 carries a prepared certificate
//! for it from v' or later; another digest can reach a score of v' only from votes in v'
//! itself (an equivocating primary's other batch), and in one view a prepared claim beats a
//! score; a score above v' needs an honest vote after v', which is for the committed batch
//! again.
//!
//! # Why a re-proposed batch can be found, and when it cannot
//!
//! A new view names its re-proposals by digest; replicas that lack a batch fetch it from a
//! peer that holds it. That works only if some honest replica holds it, and votes alone can
//! re-propose a batch: f faulty validators plus one honest vote make f + 1 reports. So an
//! honest replica signs a vote of the prepare phase only while it holds the batch and after
//! the batch is logged: a backup accepts a fresh pre-prepare with its batch and prepares a
//! re-proposal only once the batch is in (`Replica::fill_batch`); a new primary signs its new
//! view only once it holds every batch the plan re-proposes, fetched if need be
//! ([`crate::FetchBatches`]). And it keeps the batch of its latest such vote at each seq
//! until it votes for another batch there or the seq is checkpointed, also after a new view
//! proposed something else there. So a digest chosen from f + 1 reports has an honest
//! holder, and one chosen from a prepared certificate has one unless each of the f + 1
//! honest validators that voted for it has since voted for other batches at that seq. That
//! last case is open: an equivocating primary that alone holds the certificate, with a
//! schedule over three views before GST in which each honest voter votes again there, can
//! replay it so that every later view re-proposes a batch nobody honest holds, and the seq
//! stalls. Castro and Liskov close it by taking a certificate only where f + 1 view changes
//! also report having accepted the batch in its view or later (condition A2 of their
//! bounded view change); this plan does not have that rule yet. The rules above cost no
//! safety: a vote signed later, or not at all, is what a slow replica does anyway.
//!
//! # The order of the checks
//!
//! Signature checks are what a peer can make a replica spend, so they come last and cheapest
//! first: the shape of a message (views, signers, ranges, that the proposals follow the plan)
//! costs no signature; then the one signature that decides whose message it is (a view
//! change's own, a new view's primary's, which covers every byte of the new view so that a
//! relayer cannot swap a certificate under it); only then the signatures inside.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::certificate::{CertificateError, check_quorum, queue_quorum};
use crate::config::{ChainId, ReplicaId, ValidatorSet};
use crate::crypto::{BatchVerifier, CryptoError, Digest, Hasher, Keypair, Signature};
use crate::statement::{Phase, Vote, vote_digest};

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

    pub(crate) fn queue(
        &self,
        chain: &ChainId,
        validators: &ValidatorSet,
        verifier: &mut BatchVerifier,
    ) -> Result<(), CertificateError> {
        if is_epoch_start(validators, self) {
            return Ok(());
        }
        if self.seq <= validators.base().0 {
            // Certified by an earlier epoch's set, if at all.
            return Err(CertificateError::BadSignature);
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

impl Prepared {
    /// What the certificate proves: its proposal's seq, view and digest.
    pub fn claim(&self) -> PreparedClaim {
        PreparedClaim {
            seq: self.proposal.seq,
            view: self.proposal.view,
            digest: self.proposal.digest,
        }
    }

    /// Signatures the certificate carries.
    pub fn signatures(&self) -> usize {
        1 + self.prepares.len()
    }

    /// Checks the certificate's shape against what it must prove: the primary of the claim's
    /// view proposed, and a quorum-less-one of distinct other validators prepared, exactly
    /// `claim`. No signature is checked.
    pub(crate) fn check_shape(
        &self,
        validators: &ValidatorSet,
        claim: &PreparedClaim,
    ) -> Result<(), ViewChangeError> {
        let seq = claim.seq;
        let proposal = &self.proposal;
        let primary = validators.primary(claim.view);
        let well_formed = proposal.claim_matches(claim)
            && proposal.phase == Phase::PrePrepare
            && proposal.replica == primary
            && self.prepares.len() + 1 == validators.quorum();
        if !well_formed {
            return Err(ViewChangeError::BadPrepared(seq));
        }
        let mut previous_signer: Option<ReplicaId> = None;
        for prepare in &self.prepares {
            let matches = prepare.phase == Phase::Prepare
                && prepare.claim_matches(claim)
                && prepare.replica != primary
                && previous_signer.is_none_or(|p| p < prepare.replica)
                && validators.key(prepare.replica).is_some();
            if !matches {
                return Err(ViewChangeError::BadPrepared(seq));
            }
            previous_signer = Some(prepare.replica);
        }
        Ok(())
    }

    /// Queues every signature of a certificate whose shape was checked.
    pub(crate) fn queue(
        &self,
        chain: &ChainId,
        validators: &ValidatorSet,
        verifier: &mut BatchVerifier,
    ) -> Result<(), ViewChangeError> {
        let epoch = validators.epoch();
        for vote in core::iter::once(&self.proposal).chain(&self.prepares) {
            let key = validators
                .key(vote.replica)
                .ok_or(ViewChangeError::BadPrepared(vote.seq))?;
            verifier.queue(key, &vote.signed_digest(chain, epoch), &vote.signature);
        }
        Ok(())
    }
}

impl Vote {
    fn claim_matches(&self, claim: &PreparedClaim) -> bool {
        self.seq == claim.seq && self.view == claim.view && self.digest == claim.digest
    }
}

/// What a prepared certificate proves, as a view change's signature covers it: `digest`
/// prepared at `seq` in `view`. The same triple reports a vote ([`ViewChange::voted`]): the
/// signer voted for `digest` at `seq` in `view`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PreparedClaim {
    /// The sequence number.
    pub seq: u64,
    /// The view it prepared in.
    pub view: u64,
    /// The batch digest.
    pub digest: Digest,
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
    /// For every sequence number above the checkpoint the signer voted on in the prepare
    /// phase (a prepare, or a pre-prepare as primary), the (seq, view, digest) of its vote of
    /// the highest view, in increasing sequence order. Backed by nothing but this view
    /// change's signature: f + 1 signers reporting one vote make it count (the fast path).
    pub voted: Vec<PreparedClaim>,
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
        (prepared, voted): (Vec<Prepared>, Vec<PreparedClaim>),
        keypair: &Keypair,
    ) -> Self {
        let mut change = ViewChange {
            view,
            replica,
            checkpoint,
            prepared,
            voted,
            signature: Signature([0; 64]),
        };
        change.signature = keypair.sign(&change.signed_digest(chain, epoch));
        change
    }

    /// What the signature covers: the view, the signer, the checkpoint, each certificate's
    /// (seq, view, digest) and each vote it reports. The certificates' own signatures
    /// authenticate the rest.
    pub fn signed_digest(&self, chain: &ChainId, epoch: u64) -> Digest {
        view_change_digest(
            chain,
            epoch,
            (self.view, self.replica),
            (self.checkpoint.seq, &self.checkpoint.digest),
            (self.prepared.iter().map(Prepared::claim), &self.voted),
        )
    }

    /// The view change without its certificates: everything its signature covers, and the
    /// signature.
    pub fn summary(&self) -> ViewChangeSummary {
        ViewChangeSummary {
            view: self.view,
            replica: self.replica,
            checkpoint_seq: self.checkpoint.seq,
            checkpoint_digest: self.checkpoint.digest,
            prepared: self.prepared.iter().map(Prepared::claim).collect(),
            voted: self.voted.clone(),
            signature: self.signature,
        }
    }

    /// Signatures inside the certificates it carries (its checkpoint's and every prepared
    /// certificate's), not counting its own.
    pub fn certificate_signatures(&self) -> usize {
        self.checkpoint.signatures.len()
            + self
                .prepared
                .iter()
                .map(Prepared::signatures)
                .sum::<usize>()
    }
}

/// A view change as a new view carries it: what its signer signed (the view, the signer, its
/// checkpoint's seq and digest, what each of its prepared certificates proves) and the
/// signature, without the certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChangeSummary {
    /// The view the signer moves to.
    pub view: u64,
    /// The signer.
    pub replica: ReplicaId,
    /// The seq of the signer's stable checkpoint.
    pub checkpoint_seq: u64,
    /// The digest of the signer's stable checkpoint.
    pub checkpoint_digest: Digest,
    /// What each of its prepared certificates proves, in increasing sequence order.
    pub prepared: Vec<PreparedClaim>,
    /// Its latest vote at each seq, as [`ViewChange::voted`].
    pub voted: Vec<PreparedClaim>,
    /// The signer's signature, as on the full [`ViewChange`].
    pub signature: Signature,
}

impl ViewChangeSummary {
    /// What the signature covers: the same digest as the full view change's
    /// ([`ViewChange::signed_digest`]).
    pub fn signed_digest(&self, chain: &ChainId, epoch: u64) -> Digest {
        view_change_digest(
            chain,
            epoch,
            (self.view, self.replica),
            (self.checkpoint_seq, &self.checkpoint_digest),
            (self.prepared.iter().copied(), &self.voted),
        )
    }

    /// Checks the summary's shape: a view above 0, a signer in the set, and claims (prepared
    /// and voted) in strictly increasing seq order, each above the checkpoint and at most
    /// `window` above it, from a view below this one. No signature is checked.
    pub(crate) fn check_shape(
        &self,
        validators: &ValidatorSet,
        window: u64,
    ) -> Result<(), ViewChangeError> {
        if self.view == 0 {
            return Err(ViewChangeError::WrongView);
        }
        if validators.key(self.replica).is_none() {
            return Err(ViewChangeError::WrongSigner(self.replica));
        }
        check_claims(self.view, self.checkpoint_seq, &self.prepared, window)?;
        check_claims(self.view, self.checkpoint_seq, &self.voted, window)
    }
}

/// The digest a view change's signature covers, from its parts.
fn view_change_digest(
    chain: &ChainId,
    epoch: u64,
    (view, replica): (u64, ReplicaId),
    (checkpoint_seq, checkpoint_digest): (u64, &Digest),
    (claims, voted): (
        impl ExactSizeIterator<Item = PreparedClaim>,
        &[PreparedClaim],
    ),
) -> Digest {
    let mut hasher = Hasher::new(b"pbft/v2/view-change");
    hasher
        .digest(&chain.0)
        .u64(epoch)
        .u64(view)
        .u64(u64::from(replica.0))
        .u64(checkpoint_seq)
        .digest(checkpoint_digest)
        .u64(claims.len() as u64);
    for claim in claims {
        hasher.u64(claim.seq).u64(claim.view).digest(&claim.digest);
    }
    hasher.u64(voted.len() as u64);
    for claim in voted {
        hasher.u64(claim.seq).u64(claim.view).digest(&claim.digest);
    }
    hasher.finish()
}

/// Checks the claims of a view change for `view` from a checkpoint at `low`: strictly
/// increasing seqs in (low, low + window], each from a view below `view`.
fn check_claims(
    view: u64,
    low: u64,
    claims: &[PreparedClaim],
    window: u64,
) -> Result<(), ViewChangeError> {
    let mut previous_seq = low;
    for claim in claims {
        let seq = claim.seq;
        if seq <= previous_seq || seq > low.saturating_add(window) || claim.view >= view {
            return Err(ViewChangeError::BadPrepared(seq));
        }
        previous_seq = seq;
    }
    Ok(())
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
    /// A new view's checkpoint certificate is not for the checkpoint its view changes start
    /// from (the highest seq among them, with the digest the last of those reports).
    #[error("the new view's checkpoint is not the highest its view changes report")]
    WrongCheckpoint,
    /// A prepared certificate or claim is malformed (wrong phase, view, signer, count, order
    /// or range); the number is its sequence number.
    #[error("malformed prepared certificate at seq {0}")]
    BadPrepared(u64),
    /// A new view's certificates are not exactly one for each claim its plan takes: the one
    /// at this seq is missing, extra, or proves another claim.
    #[error("the new view's certificate at seq {0} is not the one its plan takes")]
    WrongCertificate(u64),
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

/// Checks a view change's shape — everything but signatures: a view above 0, a signer in the
/// set, a checkpoint certificate of a quorum of distinct validators, and claims in order within
/// `window` above the checkpoint, each backed by a well-formed certificate.
pub(crate) fn check_view_change_shape(
    validators: &ValidatorSet,
    window: u64,
    change: &ViewChange,
) -> Result<(), ViewChangeError> {
    if change.view == 0 {
        return Err(ViewChangeError::WrongView);
    }
    if validators.key(change.replica).is_none() {
        return Err(ViewChangeError::WrongSigner(change.replica));
    }
    check_checkpoint_shape(validators, &change.checkpoint).map_err(ViewChangeError::Checkpoint)?;
    let claims: Vec<PreparedClaim> = change.prepared.iter().map(Prepared::claim).collect();
    check_claims(change.view, change.checkpoint.seq, &claims, window)?;
    check_claims(change.view, change.checkpoint.seq, &change.voted, window)?;
    for (prepared, claim) in change.prepared.iter().zip(&claims) {
        prepared.check_shape(validators, claim)?;
    }
    Ok(())
}

/// A checkpoint certificate's shape: the genesis, or a quorum of distinct validators in order.
pub(crate) fn check_checkpoint_shape(
    validators: &ValidatorSet,
    checkpoint: &StableCheckpoint,
) -> Result<(), CertificateError> {
    if is_epoch_start(validators, checkpoint) {
        return Ok(());
    }
    match checkpoint.seq <= validators.base().0 {
        true => Err(CertificateError::BadSignature),
        false => check_quorum(validators, &checkpoint.signatures),
    }
}

/// Whether `checkpoint` is where the epoch of `validators` started, without signatures: the
/// genesis at seq 0, or the boundary the previous epoch certified ([`crate::EpochChange`]),
/// which the replicas of this epoch carry bare.
pub(crate) fn is_epoch_start(validators: &ValidatorSet, checkpoint: &StableCheckpoint) -> bool {
    (checkpoint.seq, checkpoint.digest) == validators.base() && checkpoint.signatures.is_empty()
}

/// Checks a view change's own signature (one check), after its shape. Its certificates are
/// left for [`verify_view_change_certificates`]: only the primary that builds a new view from
/// it needs them.
pub(crate) fn verify_view_change_signature(
    chain: &ChainId,
    validators: &ValidatorSet,
    change: &ViewChange,
) -> Result<(), ViewChangeError> {
    let key = validators
        .key(change.replica)
        .ok_or(ViewChangeError::WrongSigner(change.replica))?;
    key.verify(
        &change.signed_digest(chain, validators.epoch()),
        &change.signature,
    )?;
    Ok(())
}

/// Checks every signature in a view change's certificates (checkpoint and prepared), in one
/// batch; the shape must have been checked. [`ViewChange::certificate_signatures`] says how
/// many.
pub(crate) fn verify_view_change_certificates(
    chain: &ChainId,
    validators: &ValidatorSet,
    change: &ViewChange,
) -> Result<(), ViewChangeError> {
    let mut verifier = BatchVerifier::new();
    change
        .checkpoint
        .queue(chain, validators, &mut verifier)
        .map_err(ViewChangeError::Checkpoint)?;
    for prepared in &change.prepared {
        prepared.queue(chain, validators, &mut verifier)?;
    }
    Ok(verifier.verify()?)
}

/// Checks one view change completely: structure, checkpoint certificate, prepared
/// certificates and every signature.
pub fn verify_view_change(
    chain: &ChainId,
    validators: &ValidatorSet,
    window: u64,
    change: &ViewChange,
) -> Result<(), ViewChangeError> {
    check_view_change_shape(validators, window, change)?;
    verify_view_change_signature(chain, validators, change)?;
    verify_view_change_certificates(chain, validators, change)
}
