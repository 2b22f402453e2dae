//! The longest encodings of what grows with the validator set — a new view, a certified
//! batch — so that a configuration can be checked to hold them ([`crate::Config::validate_for`]).
//!
//! Upper bounds on postcard's encoding: every `u64` varint at its longest (10 bytes), every
//! validator id (`u16`) at 3, a length prefix at its actual length, digests and signatures at
//! their fixed 32 and 64 bytes. `tests/new_view_size.rs` builds the worst cases and checks
//! them against these bounds.

/// A `u64` varint at its longest.
const U64: usize = 10;
/// A validator id (`u16` varint) at its longest.
const ID: usize = 3;
const DIGEST: usize = 32;
const SIGNATURE: usize = 64;
/// The envelope: the version byte and the message's or record's variant (under 128 of them).
const ENVELOPE: usize = 2;
/// A vote: phase, view, seq, digest, signer, signature.
pub(crate) const VOTE: usize = 1 + U64 + U64 + DIGEST + ID + SIGNATURE;
/// What a prepared certificate proves: seq, view, digest.
const CLAIM: usize = U64 + U64 + DIGEST;

/// The bytes of the varint length prefix of a sequence of `len` elements.
pub(crate) fn len_prefix(len: usize) -> usize {
    let bits = usize::BITS - len.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

/// A prepared certificate of a set with this quorum: a proposal and `quorum - 1` prepares.
pub(crate) fn prepared(quorum: usize) -> usize {
    let prepares = quorum.saturating_sub(1);
    VOTE + len_prefix(prepares) + prepares.saturating_mul(VOTE)
}

/// A stable checkpoint certificate: seq, digest and `quorum` (signer, signature) pairs.
pub(crate) fn checkpoint(quorum: usize) -> usize {
    U64 + DIGEST + len_prefix(quorum) + quorum.saturating_mul(ID + SIGNATURE)
}

/// A view change summary with a prepared claim and a voted claim for each of `window` seqs.
pub(crate) fn summary(window: usize) -> usize {
    let claims = len_prefix(window) + window.saturating_mul(CLAIM);
    U64 + ID + U64 + DIGEST + claims.saturating_mul(2) + SIGNATURE
}

/// A QC: chain id, epoch, view, seq, digest, path and `signers` (signer, signature) pairs.
fn quorum_certificate(signers: usize) -> usize {
    DIGEST
        + U64
        + U64
        + U64
        + DIGEST
        + 1
        + len_prefix(signers)
        + signers.saturating_mul(ID + SIGNATURE)
}

/// A new view an honest primary sends, in its message or record envelope: `quorum` view
/// change summaries of `window` claims each, the checkpoint certificate, a prepared
/// certificate and a proposal for each of `window` seqs, and the signature.
pub(crate) fn new_view(quorum: usize, window: usize) -> usize {
    ENVELOPE
        .saturating_add(U64)
        .saturating_add(len_prefix(quorum))
        .saturating_add(quorum.saturating_mul(summary(window)))
        .saturating_add(checkpoint(quorum))
        .saturating_add(len_prefix(window))
        .saturating_add(window.saturating_mul(prepared(quorum)))
        .saturating_add(len_prefix(window))
        .saturating_add(window.saturating_mul(VOTE))
        .saturating_add(SIGNATURE)
}

/// Evidence: the epoch and two votes.
const EVIDENCE: usize = U64 + 2 * VOTE;

/// A full batch (at most `max_batch_ops` requests of at most `max_batch_bytes` encoded, and
/// [`crate::MAX_BATCH_EVIDENCE`] pieces of evidence, as backups enforce) with the larger of
/// its certificates, in an envelope: the `Committed`
/// message, and the `Committed` and `Prepared` records (an option tag before the batch). A
/// QC holds up to all `validators` signatures (the fast path's), a prepared certificate
/// `quorum` votes.
pub(crate) fn max_certified_batch_bytes(
    (validators, quorum): (usize, usize),
    max_batch_ops: usize,
    max_batch_bytes: usize,
) -> usize {
    let evidence = crate::MAX_BATCH_EVIDENCE;
    let batch = len_prefix(max_batch_ops)
        .saturating_add(max_batch_bytes)
        .saturating_add(len_prefix(evidence) + evidence * EVIDENCE);
    let certificate = quorum_certificate(validators).max(prepared(quorum));
    (ENVELOPE + 1)
        .saturating_add(batch)
        .saturating_add(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_prefix_takes_seven_bits_a_byte() {
        assert_eq!(len_prefix(0), 1);
        assert_eq!(len_prefix(127), 1);
        assert_eq!(len_prefix(128), 2);
        assert_eq!(len_prefix(16_383), 2);
        assert_eq!(len_prefix(16_384), 3);
        let mut buffer = [0u8; 16];
        for len in [
            0usize,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            1 << 21,
            usize::MAX,
        ] {
            let encoded = postcard::to_slice(&len, &mut buffer).map(|b| b.len());
            assert_eq!(encoded, Ok(len_prefix(len)), "{len}");
        }
    }
}
