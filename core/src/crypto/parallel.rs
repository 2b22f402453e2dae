//! Batch signature checks cut into pieces a host may run on several threads.
//!
//! The core has no threads (it is `no_std`), so a replica hands the pieces of a large batch
//! check to a [`CheckPool`] its host supplies (`pbft-host` runs them on a thread pool). Each
//! piece is a [`BatchVerifier`] with its own transcript and weights, and the batch holds
//! exactly when every piece does: under ZIP-215 a batch check agrees with checking each of
//! its signatures alone ([`crate::crypto`]), so how the signatures are grouped cannot change
//! a verdict, only where and how fast it is computed.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use super::{BatchVerifier, CryptoError, Digest, PublicKey, Signature, VerifyingKey};

/// Where a replica's batch signature checks run.
///
/// Implementations may run pieces in any order and on any thread (each piece is `Send`), and
/// must answer for each piece with its own verdict: the replica accepts a batch only when it
/// gets one `Ok` per piece it handed over. A pool that answers for more or fewer pieces
/// fails closed: the batch is refused as if a signature were bad, which a backup counts
/// against the proposal's primary, so such a pool is a host bug that costs views.
pub trait CheckPool: Send {
    /// How many pieces a large batch may be cut into: the threads that will run them. 1 keeps
    /// every check on the caller's thread, in one piece.
    fn width(&self) -> usize;

    /// Each piece's verdict ([`BatchVerifier::verify`]), in the pieces' order.
    fn verify_all(&self, pieces: Vec<BatchVerifier>) -> Vec<Result<(), CryptoError>>;
}

/// The default pool: every piece on the caller's thread, one after another.
#[derive(Clone, Copy, Debug, Default)]
pub struct InlineChecks;

impl CheckPool for InlineChecks {
    fn width(&self) -> usize {
        1
    }

    fn verify_all(&self, pieces: Vec<BatchVerifier>) -> Vec<Result<(), CryptoError>> {
        pieces.into_iter().map(BatchVerifier::verify).collect()
    }
}

/// A replica's [`CheckPool`], [`InlineChecks`] unless the host set another.
pub(crate) struct Pool(Box<dyn CheckPool>);

impl Pool {
    pub(crate) fn new(pool: Box<dyn CheckPool>) -> Self {
        Pool(pool)
    }

    /// An empty batch for exactly `count` signatures, cut into as many pieces as pay: each
    /// of at least [`SplitBatch::MIN_PIECE`] of them, at most the pool's width. Queue exactly
    /// `count`, or pieces come out smaller than that (or empty).
    pub(crate) fn batch(&self, count: usize) -> SplitBatch {
        SplitBatch::new(self.0.width(), count)
    }

    /// Whether every signature queued in `batch` verifies.
    pub(crate) fn verify(&self, batch: SplitBatch) -> Result<(), CryptoError> {
        if batch.others.is_empty() {
            // One piece stays on this thread: no hand-over for a batch too small to cut.
            return batch.first.verify();
        }
        let pieces: Vec<BatchVerifier> =
            core::iter::once(batch.first).chain(batch.others).collect();
        let handed = pieces.len();
        let verdicts = self.0.verify_all(pieces);
        // A pool that lost a piece has not vouched for its signatures.
        let every = verdicts.len() == handed && verdicts.iter().all(Result::is_ok);
        every.then_some(()).ok_or(CryptoError::BadSignature)
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool(Box::new(InlineChecks))
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pool(width {})", self.0.width())
    }
}

/// One batch check as pieces: signatures are dealt to the pieces in turn, so each piece has
/// its share of every part of the batch.
pub(crate) struct SplitBatch {
    first: BatchVerifier,
    others: Vec<BatchVerifier>,
    len: usize,
}

impl SplitBatch {
    /// The fewest signatures worth a piece of their own. A batch check's cost per signature
    /// falls with its size (measured with `cargo bench -p pbft-benches --bench messages --
    /// signature`: 21.5 µs at 64, 16.6 µs at 256), and handing a piece to another thread
    /// costs microseconds, so pieces below this lose more than they gain.
    pub(crate) const MIN_PIECE: usize = 32;

    fn new(width: usize, count: usize) -> Self {
        let pieces = (count / Self::MIN_PIECE).clamp(1, width.max(1));
        SplitBatch {
            first: BatchVerifier::new(),
            others: (1..pieces).map(|_| BatchVerifier::new()).collect(),
            len: 0,
        }
    }

    /// The piece whose turn it is.
    fn piece(&mut self) -> &mut BatchVerifier {
        let turn = self.len % (self.others.len() + 1);
        match turn
            .checked_sub(1)
            .and_then(|index| self.others.get_mut(index))
        {
            Some(piece) => piece,
            None => &mut self.first,
        }
    }

    /// Adds a signature by a key that passed the key rule ([`BatchVerifier::queue`]).
    pub(crate) fn queue(&mut self, key: &VerifyingKey, digest: &Digest, signature: &Signature) {
        self.piece().queue(key, digest, signature);
        self.len += 1;
    }

    /// Adds a signature by a key not yet checked ([`BatchVerifier::queue_key`]).
    pub(crate) fn queue_key(
        &mut self,
        key: &PublicKey,
        digest: &Digest,
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        self.piece().queue_key(key, digest, signature)?;
        self.len += 1;
        Ok(())
    }

    /// How many signatures are queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}
