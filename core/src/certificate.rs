//! Quorum certificates and the check of equivocation evidence: proofs anyone holding the validator set can
//! check offline, without trusting the replica that handed them out.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::config::{ChainId, ReplicaId, ValidatorSet};
use crate::crypto::{BatchVerifier, Digest, Signature, VerifyingKey};
use crate::merkle::{self, InclusionProof};
use crate::statement::{Batch, Evidence, Phase, Request, Vote, vote_digest};

/// Proof that a batch committed: a quorum of commit signatures on one
/// (chain, epoch, view, seq, batch digest), or, on the fast path, the vote of every validator
/// of the prepare phase on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCertificate {
    /// The network.
    pub chain_id: ChainId,
    /// The validator set that signed.
    pub epoch: u64,
    /// The view the batch committed in.
    pub view: u64,
    /// The sequence number.
    pub seq: u64,
    /// The batch's Merkle root.
    pub digest: Digest,
    /// Which votes the signatures are.
    pub path: CommitPath,
    /// The signatures, in strictly increasing signer order (one per signer).
    pub signatures: Vec<(ReplicaId, Signature)>,
}

/// How a batch committed, and so what a [`QuorumCertificate`]'s signatures sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitPath {
    /// At least a quorum (2f + 1) of commits: the commit round of the three-phase protocol
    /// (Castro and Liskov, section 4.2).
    ThreePhase,
    /// One signature of every validator (n): the pre-prepare of the primary of the view and a
    /// prepare of each other validator. With every vote in, no other batch can gather f + 1
    /// votes at the seq in that view, and the view change keeps it (SBFT's fast path, Gueta
    /// et al. 2019; see [`crate::view_change`]), so the commit round is not needed.
    Fast,
}

/// A committed batch with its certificate, sent to a validator that is behind. Anyone may
/// send it: the certificate proves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The batch.
    pub batch: Batch,
    /// Its QC; `certificate.digest` is the batch digest.
    pub certificate: QuorumCertificate,
}

/// Why a certificate, inclusion proof or piece of evidence does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Made for another network.
    #[error("certificate is for another chain")]
    WrongChain,
    /// Made by another epoch's validator set.
    #[error("certificate is for epoch {got}, validator set is epoch {expected}")]
    WrongEpoch {
        /// The certificate's epoch.
        got: u64,
        /// The set's epoch.
        expected: u64,
    },
    /// An epoch change ([`crate::EpochChange`]) that proves no change, or a QC its epoch's
    /// change rules out; the text says which.
    #[error("epoch change: {0}")]
    BadEpochChange(&'static str),
    /// Fewer distinct signers than a quorum.
    #[error("{got} signatures, a quorum is {needed}")]
    TooFewSignatures {
        /// Signatures present.
        got: usize,
        /// The quorum.
        needed: usize,
    },
    /// Signers are repeated or out of order.
    #[error("signer {0} repeated or out of order")]
    DuplicateSigner(ReplicaId),
    /// A signer is not in the validator set.
    #[error("signer {0} is not a validator")]
    UnknownSigner(ReplicaId),
    /// At least one signature does not verify.
    #[error("a signature does not verify")]
    BadSignature,
    /// The inclusion proof does not lead to the certificate's digest.
    #[error("request is not in the certified batch")]
    NotIncluded,
    /// The two votes do not conflict (another phase, view, seq or signer, the same digest, or
    /// checkpoint votes outside view 0).
    #[error("the votes do not conflict")]
    NotConflicting,
}

/// Checks a QC with nothing but the chain id and the validator set.
///
/// Every signature is checked over the one statement (chain, epoch, view, seq, digest) the QC
/// names, so a QC holding votes of two views, seqs or digests does not verify: a certificate
/// is 2f + 1 commits for one statement (Castro and Liskov, section 4.2), or on the fast path
/// all n votes of the prepare phase for it (the pre-prepare of the view's primary, a prepare
/// of every other validator).
///
/// # Errors
///
/// [`CertificateError`]: another chain or epoch, fewer than a quorum of signers (all n on the
/// fast path), signers repeated, out of order or unknown, or a signature that does not
/// verify.
pub fn verify_qc(
    chain: &ChainId,
    validators: &ValidatorSet,
    qc: &QuorumCertificate,
) -> Result<(), CertificateError> {
    if qc.chain_id != *chain {
        return Err(CertificateError::WrongChain);
    }
    if qc.epoch != validators.epoch() {
        return Err(CertificateError::WrongEpoch {
            got: qc.epoch,
            expected: validators.epoch(),
        });
    }
    let statement = |phase| vote_digest(chain, qc.epoch, phase, qc.view, qc.seq, &qc.digest);
    let mut batch = BatchVerifier::new();
    match qc.path {
        CommitPath::ThreePhase => {
            let signed = statement(Phase::Commit);
            queue_quorum(validators, &signed, &qc.signatures, &mut batch)?;
        }
        CommitPath::Fast => {
            check_quorum(validators, &qc.signatures)?;
            if qc.signatures.len() != validators.len() {
                return Err(CertificateError::TooFewSignatures {
                    got: qc.signatures.len(),
                    needed: validators.len(),
                });
            }
            let primary = validators.primary(qc.view);
            let (proposal, prepare) = (statement(Phase::PrePrepare), statement(Phase::Prepare));
            for (signer, signature) in &qc.signatures {
                let key = validators
                    .key(*signer)
                    .ok_or(CertificateError::UnknownSigner(*signer))?;
                let signed = if *signer == primary {
                    &proposal
                } else {
                    &prepare
                };
                batch.queue(key, signed, signature);
            }
        }
    }
    batch.verify().map_err(|_| CertificateError::BadSignature)
}

/// Checks that `signatures` are a quorum of distinct validators in increasing order, without
/// checking a signature.
pub(crate) fn check_quorum(
    validators: &ValidatorSet,
    signatures: &[(ReplicaId, Signature)],
) -> Result<(), CertificateError> {
    let needed = validators.quorum();
    if signatures.len() < needed {
        return Err(CertificateError::TooFewSignatures {
            got: signatures.len(),
            needed,
        });
    }
    let mut previous: Option<ReplicaId> = None;
    for (signer, _) in signatures {
        if previous.is_some_and(|p| p >= *signer) {
            return Err(CertificateError::DuplicateSigner(*signer));
        }
        previous = Some(*signer);
        if validators.key(*signer).is_none() {
            return Err(CertificateError::UnknownSigner(*signer));
        }
    }
    Ok(())
}

/// Checks that `signatures` are a quorum of distinct validators in increasing order and
/// queues each over `signed`; the caller runs the batch.
pub(crate) fn queue_quorum(
    validators: &ValidatorSet,
    signed: &Digest,
    signatures: &[(ReplicaId, Signature)],
    verifier: &mut BatchVerifier,
) -> Result<(), CertificateError> {
    check_quorum(validators, signatures)?;
    for (signer, signature) in signatures {
        let key = validators
            .key(*signer)
            .ok_or(CertificateError::UnknownSigner(*signer))?;
        verifier.queue(key, signed, signature);
    }
    Ok(())
}

/// Checks that `request` is in the batch a QC certifies, from the QC and a Merkle proof.
///
/// Together with [`verify_qc`] this lets a light client prove its request committed at
/// `qc.seq` without trusting any single replica.
pub fn verify_inclusion(
    qc: &QuorumCertificate,
    request: &Request,
    proof: &InclusionProof,
) -> Result<(), CertificateError> {
    let leaf = request.digest(&qc.chain_id);
    match merkle::root_from_proof(&leaf, proof) {
        Some(root) if root == qc.digest => Ok(()),
        _ => Err(CertificateError::NotIncluded),
    }
}

/// Whether two votes, if both validly signed, prove their signer equivocated: one signer, one
/// statement (phase, view, seq; checkpoints only in view 0), two digests. Replicas report
/// evidence only for pairs this accepts, and [`verify_evidence`] accepts no other.
pub(crate) fn conflicting(a: &Vote, b: &Vote) -> bool {
    let statement = a.phase == b.phase && a.view == b.view && a.seq == b.seq;
    let checkpoint_in_view_0 = a.phase != Phase::Checkpoint || a.view == 0;
    statement && checkpoint_in_view_0 && a.replica == b.replica && a.digest != b.digest
}

/// Checks evidence with nothing but the chain id and the validator set.
///
/// # Errors
///
/// [`CertificateError::WrongEpoch`] for another epoch's set, [`CertificateError::NotConflicting`]
/// when the votes are not two digests for one statement by one signer (see [`Evidence`]),
/// [`CertificateError::UnknownSigner`], and [`CertificateError::BadSignature`] when either
/// signature does not verify over this chain and epoch.
pub fn verify_evidence(
    chain: &ChainId,
    validators: &ValidatorSet,
    evidence: &Evidence,
) -> Result<(), CertificateError> {
    let mut batch = BatchVerifier::new();
    for (key, digest, signature) in evidence_checks(chain, validators, evidence)? {
        batch.queue(key, &digest, signature);
    }
    batch.verify().map_err(|_| CertificateError::BadSignature)
}

/// What [`verify_evidence`] checks before its signatures, and the two signature checks left:
/// (signer's key, signed digest, signature) for each vote, for a caller to batch with others.
pub(crate) fn evidence_checks<'a>(
    chain: &ChainId,
    validators: &'a ValidatorSet,
    evidence: &'a Evidence,
) -> Result<[(&'a VerifyingKey, Digest, &'a Signature); 2], CertificateError> {
    let (a, b) = (&evidence.first, &evidence.second);
    if evidence.epoch != validators.epoch() {
        return Err(CertificateError::WrongEpoch {
            got: evidence.epoch,
            expected: validators.epoch(),
        });
    }
    if !conflicting(a, b) {
        return Err(CertificateError::NotConflicting);
    }
    let key = validators
        .key(a.replica)
        .ok_or(CertificateError::UnknownSigner(a.replica))?;
    Ok([
        (key, a.signed_digest(chain, evidence.epoch), &a.signature),
        (key, b.signed_digest(chain, evidence.epoch), &b.signature),
    ])
}
