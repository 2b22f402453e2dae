//! Benchmarks live in `benches/`: `cargo bench -p pbft-benches`. This library holds the
//! fixtures they share.

use pbft_core::{BatchVerifier, Digest, Keypair, Signature, VerifyingKey};

/// `count` distinct signers, each with its signature over `digest`.
pub fn signed_by_distinct_keys(count: usize, digest: &Digest) -> Vec<(VerifyingKey, Signature)> {
    (0..count)
        .map(|i| Keypair::from_seed(&[(i % 250) as u8 + 4; 32]))
        .map(|key| (*key.verifying_key(), key.sign(digest)))
        .collect()
}

/// A batch verifier holding every signature of `signed` over `digest`.
pub fn batch_of(signed: &[(VerifyingKey, Signature)], digest: &Digest) -> BatchVerifier {
    let mut batch = BatchVerifier::new();
    for (key, signature) in signed {
        batch.queue(key, digest, signature);
    }
    batch
}
