//! The new view: how the primary of a view starts it from a quorum of view changes, and the
//! check every replica runs before it follows.
//!
//! A [`NewView`] carries the view changes as summaries (what their signers signed), the
//! certificate of the checkpoint they start from, one prepared certificate for each sequence
//! number whose batch they decide, and the primary's proposals. [`plan`] derives what a quorum
//! of view changes decides; [`verify_new_view`] checks a new view against it. Why the view
//! change rule keeps committed batches is in [`crate::view_change`].
//!
//! # Why one certificate per decided sequence number is enough
//!
//! The argument above needs two things of the view changes in Q2: every claim the plan takes
//! (the highest-view claim at each s, and the highest checkpoint) is backed by a valid
//! certificate, and h's own claims are all there. The first holds because the new view carries
//! a certificate for exactly the claims the plan takes and every replica checks them. The
//! second holds because h's signature covers its claims. A claim the plan does not take (a
//! lower view at the same s, a lower checkpoint) changes nothing the new view proposes, so its
//! certificate would prove nothing the plan uses; a Byzantine signer's unbacked claim can only
//! be taken if it is the highest, and then it needs a certificate it cannot have. So a new view
//! carries each certificate it relies on once instead of a quorum of full view changes: about
//! a quorum-th of the bytes and signatures (n = 31, window 256, at worst: 1.23 MB and 5,675
//! signatures instead of 13.6 MB and 113,615).
//!

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::config::{ChainId, ReplicaId, ValidatorSet};
use crate::crypto::{BatchVerifier, Digest, Hasher, Signature};
use crate::statement::{Batch, Phase, Vote};
use crate::view_change::{
    Prepared, PreparedClaim, StableCheckpoint, ViewChange, ViewChangeError, ViewChangeSummary,
    check_checkpoint_shape,
};

/// The new primary's signed start of `view`: the view changes it gathered, as summaries, the
/// certificates the plan they determine relies on, and its pre-prepares for the slots they
/// leave open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The view that starts.
    pub view: u64,
    /// A quorum of view changes for `view`, in strictly increasing signer order.
    pub view_changes: Vec<ViewChangeSummary>,
    /// The certificate of the highest checkpoint among the view changes (`min_s`): the one the
    /// last of them that reports that seq signed for (the genesis if it is 0).
    pub checkpoint: StableCheckpoint,
    /// For every seq above `min_s` where the plan takes a prepared claim (see [`plan`]), its
    /// certificate, in increasing seq order.
    pub prepared: Vec<Prepared>,
    /// Pre-prepare votes of the primary of `view` for every seq in (`min_s`, `max_s`].
    pub proposals: Vec<Vote>,
    /// The primary's signature over [`NewView::signed_digest`].
    pub signature: Signature,
}

impl NewView {
    /// The unsigned new view for `view` from `view_changes` — a quorum of view changes for
    /// `view` whose certificates were checked, in increasing signer order — and the primary's
    /// `proposals`, one per entry of their [`plan`]. The primary signs
    /// [`NewView::signed_digest`] into `signature`.
    ///
    /// Each certificate the plan relies on is taken from the first view change (in signer
    /// order) that carries it; the checkpoint is the one the plan starts from.
    pub fn assemble(
        validators: &ValidatorSet,
        view: u64,
        view_changes: &[ViewChange],
        proposals: Vec<Vote>,
    ) -> NewView {
        let summaries: Vec<ViewChangeSummary> =
            view_changes.iter().map(ViewChange::summary).collect();
        let (decision, checkpoint) = decide_from(validators, view_changes, &summaries);
        let prepared = decision
            .certified()
            .filter_map(|claim| {
                view_changes
                    .iter()
                    .flat_map(|change| &change.prepared)
                    .find(|prepared| prepared.claim() == *claim)
                    .cloned()
            })
            .collect();
        NewView {
            view,
            view_changes: summaries,
            checkpoint,
            prepared,
            proposals,
            signature: Signature([0; 64]),
        }
    }

    /// What the primary signs: every field of the new view but the signature (each view
    /// change with its signature, every certificate with its signatures), so that no one
    /// but the primary can change a byte of it and a new view that fails its checks is the
    /// primary's own doing.
    pub fn signed_digest(&self, chain: &ChainId, epoch: u64) -> Digest {
        let mut hasher = Hasher::new(b"pbft/v2/new-view");
        hasher
            .digest(&chain.0)
            .u64(epoch)
            .u64(self.view)
            .u64(self.view_changes.len() as u64);
        for change in &self.view_changes {
            hasher
                .digest(&change.signed_digest(chain, epoch))
                .bytes(&change.signature.0);
        }
        let checkpoint = &self.checkpoint;
        hasher
            .u64(checkpoint.seq)
            .digest(&checkpoint.digest)
            .u64(checkpoint.signatures.len() as u64);
        for (signer, signature) in &checkpoint.signatures {
            hasher.u64(u64::from(signer.0)).bytes(&signature.0);
        }
        hasher.u64(self.prepared.len() as u64);
        for prepared in &self.prepared {
            hash_vote(&mut hasher, &prepared.proposal);
            hasher.u64(prepared.prepares.len() as u64);
            for prepare in &prepared.prepares {
                hash_vote(&mut hasher, prepare);
            }
        }
        hasher.u64(self.proposals.len() as u64);
        for proposal in &self.proposals {
            hash_vote(&mut hasher, proposal);
        }
        hasher.finish()
    }

    /// The most bytes an honest primary's new view takes with `validators` validators and
    /// `window`, encoded as a message or a log record: a quorum of view change summaries with
    /// a claim for every seq of the window, a checkpoint certificate, and a prepared
    /// certificate and a proposal for every seq of the window, every number at its longest
    /// encoding. (A view change, with a certificate per seq of the window, is smaller.)
    pub fn max_bytes(validators: usize, window: u64) -> usize {
        let window = usize::try_from(window).unwrap_or(usize::MAX);
        crate::sizes::new_view(ValidatorSet::quorum_of(validators), window)
    }

    /// Signatures a full check of the new view verifies: the primary's, each view change's,
    /// the checkpoint's, every certificate's and every proposal's.
    pub fn signatures(&self) -> usize {
        1 + self.view_changes.len()
            + self.checkpoint.signatures.len()
            + self
                .prepared
                .iter()
                .map(Prepared::signatures)
                .sum::<usize>()
            + self.proposals.len()
    }
}

/// Adds every field of a vote, its signature included, to a new view's digest.
fn hash_vote(hasher: &mut Hasher, vote: &Vote) {
    let phase = match vote.phase {
        Phase::PrePrepare => 0,
        Phase::Prepare => 1,
        Phase::Commit => 2,
        Phase::Checkpoint => 3,
    };
    hasher
        .u64(phase)
        .u64(vote.view)
        .u64(vote.seq)
        .digest(&vote.digest)
        .u64(u64::from(vote.replica.0))
        .bytes(&vote.signature.0);
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

/// What the summaries of a quorum of view changes decide, before any certificate is looked at.
struct Decision {
    /// `min_s` and its digest: the highest checkpoint seq, with the digest of the last
    /// summary (in their order) that reports it.
    checkpoint: (u64, Digest),
    /// The index of that summary (none when every one reports the genesis).
    checkpoint_from: Option<usize>,
    /// For every seq above `min_s` that a prepared claim or f + 1 voted claims name, the claim
    /// the plan takes (see [`plan`]) and whether it is a prepared one (which the new view must
    /// back with its certificate). In increasing seq order.
    taken: Vec<(PreparedClaim, bool)>,
}

impl Decision {
    /// The taken claims that are prepared ones, each needing its certificate.
    fn certified(&self) -> impl Iterator<Item = &PreparedClaim> {
        self.taken
            .iter()
            .filter(|(_, certified)| *certified)
            .map(|(claim, _)| claim)
    }

    /// (seq, digest) for every seq in (`min_s`, `max_s`]: the taken claim's digest, or the
    /// null batch's where there is none.
    fn proposals(&self, chain: &ChainId) -> Vec<(u64, Digest)> {
        let min_s = self.checkpoint.0;
        let Some(max_s) = self.taken.last().map(|(claim, _)| claim.seq) else {
            return Vec::new();
        };
        let null = null_digest(chain);
        let mut taken = self.taken.iter().peekable();
        (min_s + 1..=max_s)
            .map(|seq| match taken.next_if(|(claim, _)| claim.seq == seq) {
                Some((claim, _)) => (seq, claim.digest),
                None => (seq, null),
            })
            .collect()
    }
}

/// [`decide`] over the `summaries` of `view_changes`, with the stable checkpoint the decision
/// starts from (taken from the view change that reported it; the genesis if none did).
fn decide_from(
    validators: &ValidatorSet,
    view_changes: &[ViewChange],
    summaries: &[ViewChangeSummary],
) -> (Decision, StableCheckpoint) {
    let decision = decide(validators, summaries);
    let checkpoint = decision
        .checkpoint_from
        .and_then(|index| view_changes.get(index))
        .map(|change| change.checkpoint.clone())
        .unwrap_or_default();
    (decision, checkpoint)
}

fn decide(validators: &ValidatorSet, summaries: &[ViewChangeSummary]) -> Decision {
    let mut checkpoint = (0, Digest::default());
    let mut checkpoint_from = None;
    for (index, summary) in summaries.iter().enumerate() {
        // The last of the highest, as `Iterator::max_by_key` picks.
        if summary.checkpoint_seq > 0 && summary.checkpoint_seq >= checkpoint.0 {
            checkpoint = (summary.checkpoint_seq, summary.checkpoint_digest);
            checkpoint_from = Some(index);
        }
    }
    let min_s = checkpoint.0;
    // The views of the votes reported for each (seq, digest). Each summary reports at most
    // one vote per seq (`check_claims`) and the summaries have distinct signers, so there is
    // one view per validator.
    let mut votes: BTreeMap<(u64, Digest), Vec<u64>> = BTreeMap::new();
    for claim in summaries.iter().flat_map(|summary| &summary.voted) {
        if claim.seq > min_s {
            votes
                .entry((claim.seq, claim.digest))
                .or_default()
                .push(claim.view);
        }
    }
    // A digest counts from the (f + 1)-th highest view among its reports: f + 1 validators,
    // one of them honest, voted for it in that view or later. Votes for one batch in several
    // views (some validators followed a new view that re-proposed it, others did not) add up.
    let f = validators.max_faulty();
    let voted = votes.into_iter().filter_map(|((seq, digest), mut views)| {
        views.sort_unstable_by(|a, b| b.cmp(a));
        let view = *views.get(f)?;
        Some((PreparedClaim { seq, view, digest }, false))
    });
    let prepared = summaries
        .iter()
        .flat_map(|summary| &summary.prepared)
        .filter(|claim| claim.seq > min_s)
        .map(|claim| (*claim, true));
    let mut chosen: BTreeMap<u64, (u64, bool, Digest)> = BTreeMap::new();
    for (claim, certified) in prepared.chain(voted) {
        let candidate = (claim.view, certified, claim.digest);
        let best = chosen.entry(claim.seq).or_insert(candidate);
        // The highest view wins, and in one view a prepared claim beats a voted one (see
        // `plan`); the digest breaks what ties remain, so the choice never depends on the
        // order of the input.
        *best = (*best).max(candidate);
    }
    let taken = chosen
        .into_iter()
        .map(|(seq, (view, certified, digest))| (PreparedClaim { seq, view, digest }, certified))
        .collect();
    Decision {
        checkpoint,
        checkpoint_from,
        taken,
    }
}

/// Computes the new view's starting point from view changes whose certificates were checked:
/// the highest checkpoint among them, and for every seq above it up to the highest claimed,
/// the batch of the highest-view claim or the null batch.
///
/// The claims at a seq are its prepared claims (each backed by a certificate) and, for each
/// digest that at least f + 1 of the view changes report a vote for, a voted claim from the
/// (f + 1)-th highest view among those reports. The highest view wins; in one view a
/// prepared claim beats a voted one. Why that keeps every batch committed on either path is
/// in [`crate::view_change`].
pub fn plan(chain: &ChainId, validators: &ValidatorSet, view_changes: &[ViewChange]) -> Plan {
    let summaries: Vec<ViewChangeSummary> = view_changes.iter().map(ViewChange::summary).collect();
    let (decision, checkpoint) = decide_from(validators, view_changes, &summaries);
    Plan {
        checkpoint,
        proposals: decision.proposals(chain),
    }
}

/// Checks a new view completely and returns what it starts from: a quorum of distinct, valid
/// view changes for its view, a valid certificate for every claim and the checkpoint their
/// plan takes, proposals equal to what [`plan`] derives, signed by the view's primary.
pub fn verify_new_view(
    chain: &ChainId,
    validators: &ValidatorSet,
    window: u64,
    new_view: &NewView,
) -> Result<Plan, ViewChangeError> {
    verify_new_view_counted(chain, validators, window, new_view, &mut 0)
}

/// [`verify_new_view`], adding to `verified` the signatures it checked, also when it fails.
///
/// Cheapest and most telling first (see [`crate::view_change`]): the shape and the plan (no
/// signature), then the primary's signature alone, then the view changes' signatures in one
/// batch, then the certificates' and proposals' in another.
pub(crate) fn verify_new_view_counted(
    chain: &ChainId,
    validators: &ValidatorSet,
    window: u64,
    new_view: &NewView,
    verified: &mut u64,
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
    let primary_key = validators
        .key(primary)
        .ok_or(ViewChangeError::WrongSigner(primary))?;
    let mut previous: Option<ReplicaId> = None;
    for change in &new_view.view_changes {
        if previous.is_some_and(|p| p >= change.replica) {
            return Err(ViewChangeError::DuplicateViewChange(change.replica));
        }
        previous = Some(change.replica);
        if change.view != view {
            return Err(ViewChangeError::WrongView);
        }
        change.check_shape(validators, window)?;
    }
    let decision = decide(validators, &new_view.view_changes);
    let checkpoint = &new_view.checkpoint;
    if (checkpoint.seq, checkpoint.digest) != decision.checkpoint {
        return Err(ViewChangeError::WrongCheckpoint);
    }
    check_checkpoint_shape(validators, checkpoint).map_err(ViewChangeError::Checkpoint)?;
    let mut certificates = new_view.prepared.iter();
    for claim in decision.certified() {
        let prepared = certificates
            .next()
            .ok_or(ViewChangeError::WrongCertificate(claim.seq))?;
        if prepared.claim() != *claim {
            return Err(ViewChangeError::WrongCertificate(prepared.proposal.seq));
        }
        prepared.check_shape(validators, claim)?;
    }
    if let Some(extra) = certificates.next() {
        return Err(ViewChangeError::WrongCertificate(extra.proposal.seq));
    }
    let plan = decision.proposals(chain);
    let mut proposals = new_view.proposals.iter();
    for &(seq, digest) in &plan {
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
    }
    if let Some(extra) = proposals.next() {
        return Err(ViewChangeError::WrongProposal(extra.seq));
    }
    // Whose message is it? Only the primary's signature says, and it covers every byte.
    *verified += 1;
    primary_key.verify(&new_view.signed_digest(chain, epoch), &new_view.signature)?;
    // Did a quorum move to this view? The view changes' own signatures say.
    let mut signers = BatchVerifier::new();
    for change in &new_view.view_changes {
        let key = validators
            .key(change.replica)
            .ok_or(ViewChangeError::WrongSigner(change.replica))?;
        signers.queue(key, &change.signed_digest(chain, epoch), &change.signature);
    }
    *verified += signers.len() as u64;
    signers.verify()?;
    // Only now the certificates and the proposals.
    let mut rest = BatchVerifier::new();
    checkpoint
        .queue(chain, validators, &mut rest)
        .map_err(ViewChangeError::Checkpoint)?;
    for prepared in &new_view.prepared {
        prepared.queue(chain, validators, &mut rest)?;
    }
    for proposal in &new_view.proposals {
        rest.queue(
            primary_key,
            &proposal.signed_digest(chain, epoch),
            &proposal.signature,
        );
    }
    *verified += rest.len() as u64;
    rest.verify()?;
    Ok(Plan {
        checkpoint: checkpoint.clone(),
        proposals: plan,
    })
}
