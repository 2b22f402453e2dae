//! Checking the signatures of many requests at once (their clients', or those of the
//! gateways that attested them), in pieces on the host's [`CheckPool`] when it gave one, and
//! finding the forged ones when the batch check fails.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::borrow::Borrow;

use alloc::collections::BTreeSet;

use super::Replica;
use crate::certificate::evidence_checks;
use crate::config::ChainId;
use crate::crypto::{CheckPool, CryptoError, Digest, Pool, PublicKey, Signature, VerifyingKey};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::statement::{Batch, Request};

impl Replica {
    /// Runs this replica's large batch signature checks (a pre-prepare's client signatures
    /// not verified here before, a primary's batch, a group of arrivals in
    /// [`Replica::submit_all`]) on `pool`, cut into up to its width of pieces of at least 32
    /// signatures each; a check of fewer than 64 stays on the caller's thread. Verdicts do not
    /// change (see [`CheckPool`]); the default is [`crate::InlineChecks`].
    pub fn set_check_pool(&mut self, pool: Box<dyn CheckPool>) {
        self.intake.pool = Pool::new(pool);
    }

    /// Checks the primary's signature (queued in `verifier`), the client signatures of its
    /// proposed batch (`requests`, with their `leaves`) that this replica did not verify
    /// before ([`Intake::verified_before`]) and the batch's evidence, in one batch check;
    /// counts the checks, and the signatures found cached when the proposal holds. Only when
    /// it holds are the checked ones remembered.
    ///
    /// # Errors
    ///
    /// [`Error::Crypto`] when a signature fails; [`Error::Certificate`] for evidence that is
    /// not two conflicting votes of a validator of its epoch; [`Error::OtherEpoch`] for
    /// evidence of a later epoch.
    pub(super) fn verify_proposal(
        &mut self,
        (key, signed, signature): (&VerifyingKey, &Digest, &Signature),
        batch: &Batch,
        leaves: &[Digest],
    ) -> Result<(), Error> {
        let requests = &batch.requests;
        let leaves = leaves.get(..requests.len()).unwrap_or(leaves);
        // Each piece against the set of its epoch: this one's, or an earlier one's (evidence
        // found before a boundary and committed after it still convicts the key).
        let sets = batch
            .evidence
            .iter()
            .map(|piece| self.set_of_epoch(piece.epoch))
            .collect::<Result<Vec<_>, _>>()?;
        let mut evidence = Vec::with_capacity(2 * batch.evidence.len());
        for (piece, set) in batch.evidence.iter().zip(&sets) {
            evidence.extend(evidence_checks(&self.config.chain_id, set, piece)?);
        }
        let covered = signed_digests(&self.config.chain_id, requests, leaves);
        // Cut for what is left after the cached ones, so that no piece comes out small.
        let unchecked: Vec<(&Request, Option<Digest>)> = requests
            .iter()
            .zip(leaves)
            .zip(&covered)
            .filter(|((request, leaf), signed)| {
                !self.intake.verified_before(leaf, signed.as_ref(), request)
            })
            .map(|((request, _), signed)| (request, *signed))
            .collect();
        let cached = (requests.len() - unchecked.len()) as u64;
        // Requests a gateway attested together share one check.
        let mut distinct = BTreeSet::new();
        let mut checks = Vec::with_capacity(unchecked.len());
        for (request, signed) in &unchecked {
            let digest = signed.ok_or(CryptoError::BadSignature)?;
            let key = (*request.signer(), digest, request.signature.0);
            if request.attestation.is_none() || distinct.insert(key) {
                checks.push((request.signer(), digest, &request.signature));
            }
        }
        let mut batch = self.intake.pool.batch(checks.len() + evidence.len() + 1);
        batch.queue(key, signed, signature);
        for (key, digest, signature) in &evidence {
            batch.queue(key, digest, signature);
        }
        for (signer, digest, signature) in &checks {
            batch.queue_key(signer, digest, signature)?;
        }
        let checked = batch.len() as u64;
        self.metrics.signatures_verified += checked;
        if checked > 1 {
            self.metrics.signatures_batch_verified += checked;
        }
        self.intake.pool.verify(batch)?;
        self.metrics.signatures_cached += cached;
        for (request, signed) in unchecked {
            self.intake.verified_now(signed.as_ref(), request);
        }
        Ok(())
    }
}

/// The verdict on each signature of `requests`, in order, given what each signature covers
/// (`signed`, from [`signed_digests`]; `None` for a malformed path, refused): one check alone
/// for a single signature, else one batch check, bisected ([`find_forged`]) only if it fails.
/// Requests attested together by a gateway share one check. Every signature check, each time
/// a signature is checked again during the search, counts in `signatures_verified` (and
/// `signatures_batch_verified` when in a batch of several).
pub(super) fn check_signatures<R: Borrow<Request>>(
    metrics: &mut Metrics,
    pool: &Pool,
    requests: &[R],
    signed: &[Option<Digest>],
) -> Vec<Result<(), CryptoError>> {
    let (verdicts, checked) = check_signed(pool, requests, signed);
    metrics.signatures_verified += checked.signatures;
    metrics.signatures_batch_verified += checked.batched;
    verdicts
}

/// What each request's signature covers ([`Request::signed`]), computed once: hashing an
/// attested request's path is most of what checking it costs once its group's signature is
/// known. Requests and leaves of different lengths give `None` for every request.
pub(crate) fn signed_digests<R: Borrow<Request>>(
    chain: &ChainId,
    requests: &[R],
    leaves: &[Digest],
) -> Vec<Option<Digest>> {
    if requests.len() != leaves.len() {
        return vec![None; requests.len()];
    }
    requests
        .iter()
        .zip(leaves)
        .map(|(request, leaf)| request.borrow().signed(chain, leaf).map(|(_, d)| d))
        .collect()
}

/// Signature checks one call of [`check_request_signatures`] made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Signatures checked, each time it was checked (in a batch or alone).
    pub(crate) signatures: u64,
    /// Of those, the ones checked in a batch of several.
    pub(crate) batched: u64,
}

/// One signature to check: who signed, what, and the signature.
pub(super) type Check<'a> = (&'a PublicKey, Digest, &'a Signature);

/// [`check_signatures`] for any role, from the requests and their `leaves`: the verdicts,
/// and what they cost. Requests and leaves of different lengths are all refused, unchecked,
/// and so is an attested request whose path is malformed ([`Request::signed`]).
pub(crate) fn check_request_signatures<R: Borrow<Request>>(
    pool: &Pool,
    chain: &ChainId,
    requests: &[R],
    leaves: &[Digest],
) -> (Vec<Result<(), CryptoError>>, Checked) {
    check_signed(pool, requests, &signed_digests(chain, requests, leaves))
}

/// [`check_request_signatures`] given what each signature covers.
fn check_signed<R: Borrow<Request>>(
    pool: &Pool,
    requests: &[R],
    signed: &[Option<Digest>],
) -> (Vec<Result<(), CryptoError>>, Checked) {
    // One digest per request, or nothing is checked and nothing passes.
    if requests.len() != signed.len() {
        let refused = vec![Err(CryptoError::BadSignature); requests.len()];
        return (refused, Checked::default());
    }
    // Each request's check, the ones a gateway attested together checked once.
    let mut checks: Vec<Check<'_>> = Vec::with_capacity(requests.len());
    let mut attested = BTreeMap::new();
    let of: Vec<Option<usize>> = requests
        .iter()
        .zip(signed)
        .map(|(request, signed)| {
            let request = request.borrow();
            let signed = (*signed)?;
            if request.attestation.is_none() {
                checks.push((request.signer(), signed, &request.signature));
                return Some(checks.len() - 1);
            }
            let key = (*request.signer(), signed, request.signature.0);
            Some(*attested.entry(key).or_insert_with(|| {
                checks.push((request.signer(), signed, &request.signature));
                checks.len() - 1
            }))
        })
        .collect();
    let (verdicts, checked) = check_all(pool, &checks);
    let verdicts = of
        .into_iter()
        .map(|check| {
            check
                .and_then(|check| verdicts.get(check).copied())
                .unwrap_or(Err(CryptoError::BadSignature))
        })
        .collect();
    (verdicts, checked)
}

/// The verdict on each of `checks`, in order, and what they cost.
fn check_all(pool: &Pool, checks: &[Check<'_>]) -> (Vec<Result<(), CryptoError>>, Checked) {
    let count = checks.len() as u64;
    let mut checked = Checked {
        signatures: count,
        batched: 0,
    };
    if let [(signer, signed, signature)] = checks {
        let verdict = signer
            .verifying_key()
            .and_then(|key| key.verify(signed, signature));
        return (vec![verdict], checked);
    }
    if count > 1 {
        checked.batched += count;
    }
    if batch_check(pool, checks) {
        return (vec![Ok(()); checks.len()], checked);
    }
    let (verdicts, cost) = find_forged(checks);
    checked.signatures += cost.batched + cost.single;
    checked.batched += cost.batched;
    (verdicts, checked)
}

/// What finding the forged requests of a batch cost, beyond the batch check that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SearchCost {
    /// Batch checks made (each of two or more signatures).
    pub(super) batch_checks: u64,
    /// Signatures in them, each counted every time it was in one.
    pub(super) batched: u64,
    /// Signatures checked alone.
    pub(super) single: u64,
}

/// Whether every one of `checks` holds, in one batch check (a key that breaks the key rule
/// fails it), cut into pieces for `pool`.
fn batch_check(pool: &Pool, checks: &[Check<'_>]) -> bool {
    let mut batch = pool.batch(checks.len());
    let queued = checks
        .iter()
        .all(|(signer, signed, signature)| batch.queue_key(signer, signed, signature).is_ok());
    queued && pool.verify(batch).is_ok()
}

/// The verdict on each request of a batch whose batch check failed, in order, and what
/// finding them cost.
///
/// Bisection: a failing set is split in halves and each half batch-checked, recursing only
/// into halves that fail; a single request is checked alone (which also names the error: a
/// bad key or a bad signature). A batch check says "all hold" exactly when each check alone
/// would (ZIP-215, see [`crate::crypto`]), so when the left half of a failing set holds, the
/// right half is known to fail and is split without a check of its own. Were that inference
/// ever wrong, the search would only cost more: nothing is dropped without failing a check
/// alone. One forged request in a batch of n = 2^k then costs at most 2(k − 1) batch checks
/// (2n − 4 signatures in all) and 2 checks alone, where checking all n alone cost n.
///
/// A batch check costs about half a check alone per signature (measured: 0.5 to 0.4 from
/// 8 to 1024 signatures of distinct keys), so bisection saves time only on a sparse
/// forgery: up to 40% for one, by its position (little for one early in a batch of 64), and
/// nothing for two far apart (up to 1.4 times the cost). Dense forgeries would
/// make it batch-check every signature once per level (n·log2 n in all, 3–4.6 times the
/// cost of checking each alone). So once the search has batch-checked n signatures, a set
/// that fails is checked alone instead of split (a single forgery is found before that:
/// its path takes at most n − 2): the search then batch-checks fewer than 2.5n signatures
/// and checks each at most once alone, about 1.7 times the old cost at worst.
pub(super) fn find_forged(checks: &[Check<'_>]) -> (Vec<Result<(), CryptoError>>, SearchCost) {
    let mut verdicts = vec![Ok(()); checks.len()];
    let mut search = Search {
        split_until: checks.len() as u64,
        cost: SearchCost::default(),
    };
    search.run(checks, &mut verdicts, true);
    (verdicts, search.cost)
}

/// The state of one [`find_forged`] search.
struct Search {
    /// Failing sets are split while fewer signatures than this have been batch-checked.
    split_until: u64,
    cost: SearchCost,
}

impl Search {
    /// Finds the forged among `checks`, writing a verdict on each into `verdicts`;
    /// `failing` says the set is known to hold a forgery. Returns whether it holds one.
    /// Recursion depth is log2 of the batch size.
    fn run(
        &mut self,
        checks: &[Check<'_>],
        verdicts: &mut [Result<(), CryptoError>],
        failing: bool,
    ) -> bool {
        if checks.len() < 2 {
            return self.each_alone(checks, verdicts);
        }
        if !failing {
            self.cost.batch_checks += 1;
            self.cost.batched += checks.len() as u64;
            // The search stays on this thread: what it costs is charged to the forger's group.
            if batch_check(&Pool::default(), checks) {
                return false;
            }
        }
        if self.cost.batched >= self.split_until {
            return self.each_alone(checks, verdicts);
        }
        let middle = checks.len() / 2;
        let checks = checks.split_at(middle);
        let verdicts = verdicts.split_at_mut(middle);
        let left = self.run(checks.0, verdicts.0, false);
        let right = self.run(checks.1, verdicts.1, !left);
        left || right
    }

    /// Checks each alone, every one (none skipped); whether any is forged.
    fn each_alone(
        &mut self,
        checks: &[Check<'_>],
        verdicts: &mut [Result<(), CryptoError>],
    ) -> bool {
        let mut forged = false;
        for ((signer, signed, signature), verdict) in checks.iter().zip(verdicts) {
            self.cost.single += 1;
            *verdict = signer
                .verifying_key()
                .and_then(|key| key.verify(signed, signature));
            forged |= verdict.is_err();
        }
        forged
    }
}
