//! The signature cache: client signatures this replica verified, so that it checks a
//! request's signature once (the reference design's signature cache). A backup's watched
//! requests already spare the check of a request verified on arrival when it comes back inside
//! its pre-prepare; this table covers the other orders: a copy a client retransmits after the
//! pre-prepare that carried it, or after it executed, and a request proposed again after a
//! view change.

use alloc::vec;
use alloc::vec::Vec;

use crate::crypto::{Digest, Signature};

/// Slots of the table, in 776 KiB. An entry survives k later inserts with probability
/// (1 − 1/8,192)^k: 78 % after 2,000 (250 ms at 8,000 ops/s, a client's first retransmission
/// timeout), 37 % after 8,192. A miss costs only the check it saves.
const SLOTS: usize = 1 << 13;

/// Request signatures that verified here: a direct-mapped table of [`SLOTS`] slots, each
/// holding the last (request digest, signature) that verified among the digests indexing it
/// (by their first 8 bytes: uniform for honest clients; a client that grinds its op can aim
/// at a slot, each eviction costing it a valid request this replica checks anyway).
/// Allocated at the first insert; nothing after.
///
/// A hit is exact: the request digest covers the chain, the client's key, its request number
/// and the operation, so an equal (digest, signature) pair is the very check that held, and a
/// forged copy of a request (another signature) misses. Only pairs whose check held enter, so
/// nothing from the network can make it answer wrongly; valid requests can only push entries
/// out, and a miss costs only the check it would have cost anyway.
#[derive(Debug, Default)]
pub(super) struct SignatureCache {
    slots: Vec<Option<(Digest, [u8; 64])>>,
}

impl SignatureCache {
    fn slot(digest: &Digest) -> usize {
        let mut first = [0; 8];
        first.copy_from_slice(&digest.0[..8]);
        u64::from_le_bytes(first) as usize % SLOTS
    }

    /// Remembers that `signature` verified over the request digest `digest`.
    pub(super) fn insert(&mut self, digest: &Digest, signature: &Signature) {
        if self.slots.is_empty() {
            self.slots = vec![None; SLOTS];
        }
        if let Some(slot) = self.slots.get_mut(Self::slot(digest)) {
            *slot = Some((*digest, signature.0));
        }
    }

    /// Whether `signature` over `digest` verified here, as far as the table remembers.
    pub(super) fn holds(&self, digest: &Digest, signature: &Signature) -> bool {
        self.slots
            .get(Self::slot(digest))
            .and_then(Option::as_ref)
            .is_some_and(|(d, s)| d == digest && *s == signature.0)
    }
}

#[cfg(test)]
mod tests {
    use super::{SLOTS, SignatureCache};
    use crate::crypto::{Digest, Signature};

    fn digest(first: u64, rest: u8) -> Digest {
        let mut bytes = [rest; 32];
        bytes[..8].copy_from_slice(&first.to_le_bytes());
        Digest(bytes)
    }

    #[test]
    fn a_hit_is_the_same_digest_with_the_same_signature() {
        let mut cache = SignatureCache::default();
        let (d, s) = (digest(7, 1), Signature([9; 64]));
        assert!(!cache.holds(&d, &s));
        cache.insert(&d, &s);
        assert!(cache.holds(&d, &s));
        assert!(!cache.holds(&d, &Signature([8; 64])), "another signature");
        assert!(!cache.holds(&digest(7, 2), &s), "another digest, same slot");
    }

    #[test]
    fn a_colliding_digest_pushes_the_older_one_out() {
        let mut cache = SignatureCache::default();
        let s = Signature([1; 64]);
        let (old, new) = (digest(5, 0), digest(5 + SLOTS as u64, 0));
        cache.insert(&old, &s);
        cache.insert(&new, &s);
        assert!(cache.holds(&new, &s));
        assert!(!cache.holds(&old, &s));
        assert!(cache.holds(&new, &s));
    }
}
