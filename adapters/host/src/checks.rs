//! Batch signature checks on a thread pool: a validator alone on a machine checks the pieces
//! of a large batch on all its cores ([`pbft_core::CheckPool`]).

use pbft_core::{BatchVerifier, CheckPool, CryptoError};
use rayon::iter::{IntoParallelIterator, ParallelIterator};

/// A [`CheckPool`] of `threads` rayon threads. The node's thread waits while the pool checks
/// a batch's pieces, so `threads` should be the cores the node may use (see
/// [`default_threads`]).
#[derive(Debug)]
pub struct ThreadChecks {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl ThreadChecks {
    /// A pool of `threads` threads (at least 1), named `pbft-verify-N`.
    ///
    /// # Errors
    ///
    /// The operating system refused a thread.
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|index| format!("pbft-verify-{index}"))
            .build()?;
        Ok(ThreadChecks { pool, threads })
    }
}

impl CheckPool for ThreadChecks {
    fn width(&self) -> usize {
        self.threads
    }

    fn verify_all(&self, pieces: Vec<BatchVerifier>) -> Vec<Result<(), CryptoError>> {
        self.pool
            .install(|| pieces.into_par_iter().map(BatchVerifier::verify).collect())
    }
}

/// The most threads a node checks signatures on. A batch of the default `max_batch_ops`
/// (1,024) makes at most 32 pieces of 32 signatures, so more threads than 32 wait unless
/// batches are larger; 256 serves batches up to 8,192 and refuses a mistyped count.
pub const MAX_THREADS: usize = 256;

/// The threads a node checks signatures on when its config does not say: the cores this
/// process may run on (1 if the system will not tell), at most [`MAX_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::{Hasher, Keypair};

    /// Pieces of `per_piece` signatures each, all genuine unless `forged` names a piece.
    fn pieces(count: usize, per_piece: usize, forged: Option<usize>) -> Vec<BatchVerifier> {
        let digest = Hasher::new(b"checks test").finish();
        (0..count)
            .map(|piece| {
                let mut batch = BatchVerifier::new();
                for i in 0..per_piece {
                    let key = Keypair::from_seed(&[(piece * per_piece + i) as u8; 32]);
                    let signed = if forged == Some(piece) && i == per_piece - 1 {
                        Hasher::new(b"another statement").finish()
                    } else {
                        digest
                    };
                    batch.queue(key.verifying_key(), &digest, &key.sign(&signed));
                }
                batch
            })
            .collect()
    }

    #[test]
    fn every_piece_must_hold_on_any_thread() {
        let checks = ThreadChecks::new(3).unwrap();
        assert_eq!(checks.width(), 3);
        assert_eq!(checks.verify_all(pieces(3, 4, None)), vec![Ok(()); 3]);
        for forged in 0..3 {
            let verdicts = checks.verify_all(pieces(3, 4, Some(forged)));
            for (piece, verdict) in verdicts.iter().enumerate() {
                assert_eq!(verdict.is_err(), piece == forged, "{forged}: {verdicts:?}");
            }
        }
        let one = ThreadChecks::new(0).unwrap();
        assert_eq!(one.verify_all(pieces(2, 2, None)), vec![Ok(()); 2]);
    }
}
