//! Keys, digests and the one signature acceptance rule every path uses.
//!
//! Signing is ed25519-dalek (RFC 8032, deterministic). Verification follows ZIP-215 as
//! implemented by ed25519-zebra: the cofactored equation `[8][s]B = [8]R + [8][k]A` with a
//! canonical `s`, for single and batch checks alike. ed25519-dalek's `verify_strict`
//! (cofactorless) and `verify_batch` (cofactorless with random weights) can disagree on
//! signatures whose `R` has a small-order component, so a Byzantine signer could make honest
//! replicas disagree on which messages are valid; ZIP-215 makes the verdict independent of how
//! signatures are grouped. On top of it, public keys must be canonical encodings of points
//! that are not of small order, so every identity has one encoding and no key signs everything.

use core::convert::Infallible;
use core::fmt;

use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use sha3::digest::Update;
use sha3::{Digest as _, Sha3_256};

/// A sha3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.iter().take(6) {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Incremental sha3-256 over fixed-width, length-prefixed fields.
///
/// Every digest in the protocol starts with a domain tag, so a digest of one kind can never
/// equal a digest of another kind over the same field bytes.
#[derive(Clone)]
pub struct Hasher(Sha3_256);

impl Hasher {
    /// Starts a digest with a domain tag such as `b"pbft/v1/prepare"`.
    pub fn new(domain: &[u8]) -> Self {
        let mut hasher = Hasher(Sha3_256::new());
        hasher.bytes(domain);
        hasher
    }

    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.u64(bytes.len() as u64);
        Update::update(&mut self.0, bytes);
        self
    }

    /// Appends a fixed-width big-endian integer.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        Update::update(&mut self.0, &value.to_be_bytes());
        self
    }

    /// Appends a digest (fixed width, no prefix).
    pub fn digest(&mut self, digest: &Digest) -> &mut Self {
        Update::update(&mut self.0, &digest.0);
        self
    }

    /// Finishes the digest.
    pub fn finish(&self) -> Digest {
        Digest(self.0.clone().finalize().into())
    }
}

/// An ed25519 public key as it travels on the wire: 32 bytes, not yet checked.
///
/// Use [`PublicKey::verifying_key`] to check it once and keep the result.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?})", Digest(self.0))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Digest(self.0), f)
    }
}

impl PublicKey {
    /// Applies the key rule on the bytes alone, with no curve arithmetic: the encoding must
    /// be canonical (y < p) and not one of the eight small-order points. Whether the bytes are
    /// a curve point at all is settled when the key is decompressed to verify.
    pub fn check(&self) -> Result<(), CryptoError> {
        if !is_canonical_y(&self.0) {
            return Err(CryptoError::NonCanonicalKey);
        }
        if SMALL_ORDER_ENCODINGS.contains(&self.0) {
            return Err(CryptoError::SmallOrderKey);
        }
        Ok(())
    }

    /// Checks the key against the acceptance rule and decompresses it, once.
    pub fn verifying_key(&self) -> Result<VerifyingKey, CryptoError> {
        self.check()?;
        let key = ed25519_zebra::VerificationKey::try_from(self.0)
            .map_err(|_| CryptoError::MalformedKey)?;
        Ok(VerifyingKey { bytes: *self, key })
    }
}

/// Whether the encoding is canonical: the 255-bit y is below p = 2^255 - 19, and the sign
/// bit is clear when x = 0 (the points y = 1 and y = -1).
fn is_canonical_y(bytes: &[u8; 32]) -> bool {
    let [low, middle @ .., high] = bytes;
    let below_p = *low < 0xed || middle.iter().any(|&b| b != 0xff) || (high & 0x7f) != 0x7f;
    let negative_zero_x = high & 0x80 != 0 && {
        let mut y = *bytes;
        y[31] &= 0x7f;
        y == ONE || y == MINUS_ONE
    };
    below_p && !negative_zero_x
}

const ONE: [u8; 32] = SMALL_ORDER_ENCODINGS[0];
const MINUS_ONE: [u8; 32] = SMALL_ORDER_ENCODINGS[1];

/// The canonical encodings of the eight points of small order (the torsion subgroup).
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = [
    // identity (order 1)
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    // y = -1 (order 2)
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = 0, both signs of x (order 4)
    [0; 32],
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0x80,
    ],
    // order 8
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0xfa,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x85,
    ],
];

/// A public key that passed the acceptance rule, decompressed for fast verification.
#[derive(Clone, Copy)]
pub struct VerifyingKey {
    bytes: PublicKey,
    key: ed25519_zebra::VerificationKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.bytes, f)
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for VerifyingKey {}

impl VerifyingKey {
    /// The wire form of this key.
    pub fn public_key(&self) -> PublicKey {
        self.bytes
    }

    /// Verifies one signature over a protocol digest.
    pub fn verify(&self, digest: &Digest, signature: &Signature) -> Result<(), CryptoError> {
        self.key
            .verify(&ed25519::Signature::from_bytes(&signature.0), &digest.0)
            .map_err(|_| CryptoError::BadSignature)
    }
}

/// An ed25519 signature: 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut head = [0u8; 32];
        head.copy_from_slice(&self.0[..32]);
        write!(f, "Signature({:?})", Digest(head))
    }
}

// serde only derives arrays up to 32; a 64-byte signature is encoded as a fixed-size tuple.
impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(64)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Signature, A::Error> {
                let mut bytes = [0u8; 64];
                for (index, byte) in bytes.iter_mut().enumerate() {
                    *byte = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(index, &self))?;
                }
                Ok(Signature(bytes))
            }
        }
        deserializer.deserialize_tuple(64, Visitor)
    }
}

/// A signing identity: an ed25519 secret key and its public key.
pub struct Keypair {
    signing: ed25519_dalek::SigningKey,
    public: VerifyingKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({:?})", self.public)
    }
}

impl Keypair {
    /// Builds a keypair from a 32-byte secret seed (RFC 8032).
    ///
    /// The core has no randomness: the host draws the seed from its OS and stores it.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        // The secret lives in `signing` only; ed25519-dalek (with its `zeroize` feature)
        // wipes it when the keypair is dropped.
        let signing = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = PublicKey(signing.verifying_key().to_bytes());
        // A key derived from a seed is canonical and of large order (a clamped scalar times
        // the base point), so this never fails in practice; were it to, peers would reject
        // the key anyway, and the keypair keeps the unchecked form. The second copy of the
        // secret this needs is made only then, and wiped (zebra's key is `Copy`: it cannot
        // wipe itself on drop).
        let public = public.verifying_key().unwrap_or_else(|_| {
            let mut zebra = ed25519_zebra::SigningKey::from(*seed);
            let key = ed25519_zebra::VerificationKey::from(&zebra);
            zeroize::Zeroize::zeroize(&mut zebra);
            VerifyingKey { bytes: public, key }
        });
        Keypair { signing, public }
    }

    /// A copy of the 32-byte secret seed, for the host to store. The copy is the caller's to
    /// wipe (for example by holding it in a `zeroize::Zeroizing`); the keypair wipes its own
    /// when dropped.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public.bytes
    }

    /// A second handle on the same key (a replica rebuilding itself for a new epoch); the
    /// secret is copied inside `ed25519-dalek`, which wipes each copy when it is dropped.
    pub(crate) fn duplicate(&self) -> Keypair {
        Keypair {
            signing: self.signing.clone(),
            public: self.public,
        }
    }

    /// The public half, ready for verification.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs a protocol digest.
    pub fn sign(&self, digest: &Digest) -> Signature {
        Signature(self.signing.sign(&digest.0).to_bytes())
    }
}

// The keypair's only secret is its `SigningKey`, which wipes itself on drop. The closure
// below checks that at compile time: it stops compiling if ed25519-dalek's `zeroize`
// feature is ever turned off.
impl zeroize::ZeroizeOnDrop for Keypair {}
const _: fn() = || {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<ed25519_dalek::SigningKey>();
};

/// Why a key or signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The 32 bytes are not the encoding of a curve point.
    #[error("public key is not a curve point")]
    MalformedKey,
    /// The point has another, canonical encoding; identities must have exactly one.
    #[error("public key is not canonically encoded")]
    NonCanonicalKey,
    /// The point has small order; a signature under it proves nothing.
    #[error("public key has small order")]
    SmallOrderKey,
    /// The signature does not verify under the acceptance rule.
    #[error("signature does not verify")]
    BadSignature,
}

/// Verifies many signatures at once, with the same verdict as checking each alone.
///
/// The random weights of the batch equation come from a sha3-256 transcript of every queued
/// item, so verification is deterministic and a signer cannot choose items knowing the
/// weights (the Fiat–Shamir argument ed25519-dalek also relies on).
pub struct BatchVerifier {
    verifier: ed25519_zebra::batch::Verifier,
    transcript: Hasher,
    len: usize,
}

impl Default for BatchVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchVerifier {
    /// An empty batch.
    pub fn new() -> Self {
        BatchVerifier {
            verifier: ed25519_zebra::batch::Verifier::new(),
            transcript: Hasher::new(b"pbft/v1/batch-verification"),
            len: 0,
        }
    }

    /// Adds one signature over `digest` by `key`, a key that passed the key rule.
    pub fn queue(&mut self, key: &VerifyingKey, digest: &Digest, signature: &Signature) {
        self.queue_bytes(&key.bytes, digest, signature);
    }

    /// Adds one signature by a key not yet checked: checks the key rule first, which costs
    /// one decompression instead of the two of building a [`VerifyingKey`].
    pub fn queue_key(
        &mut self,
        key: &PublicKey,
        digest: &Digest,
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        key.check()?;
        self.queue_bytes(key, digest, signature);
        Ok(())
    }

    fn queue_bytes(&mut self, key: &PublicKey, digest: &Digest, signature: &Signature) {
        let bytes = ed25519_zebra::VerificationKeyBytes::from(key.0);
        let sig = ed25519::Signature::from_bytes(&signature.0);
        self.verifier.queue((bytes, sig, &digest.0));
        self.transcript
            .bytes(&key.0)
            .digest(digest)
            .bytes(&signature.0);
        self.len += 1;
    }

    /// How many signatures are queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks every queued signature; `Ok` only if all of them verify.
    pub fn verify(self) -> Result<(), CryptoError> {
        match self.len {
            0 => Ok(()),
            _ => {
                let rng = TranscriptRng {
                    seed: self.transcript.finish(),
                    counter: 0,
                };
                self.verifier
                    .verify(rng)
                    .map_err(|_| CryptoError::BadSignature)
            }
        }
    }
}

/// Deterministic weights for batch verification: sha3-256 in counter mode over the
/// transcript digest.
struct TranscriptRng {
    seed: Digest,
    counter: u64,
}

impl TranscriptRng {
    fn block(&mut self) -> Digest {
        self.counter += 1;
        Hasher::new(b"pbft/v1/batch-weights")
            .digest(&self.seed)
            .u64(self.counter)
            .finish()
    }
}

impl rand_core::TryRng for TranscriptRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let [a, b, c, d, ..] = self.block().0;
        Ok(u32::from_le_bytes([a, b, c, d]))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let [a, b, c, d, e, f, g, h, ..] = self.block().0;
        Ok(u64::from_le_bytes([a, b, c, d, e, f, g, h]))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(32) {
            let block = self.block();
            for (out, byte) in chunk.iter_mut().zip(block.0) {
                *out = byte;
            }
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for TranscriptRng {}

/// Checks `(key, digest, signature)` triples: one alone, or several in one batch.
pub fn verify_all(items: &[(&VerifyingKey, &Digest, &Signature)]) -> Result<(), CryptoError> {
    match items {
        [] => Ok(()),
        [(key, digest, signature)] => key.verify(digest, signature),
        _ => {
            let mut batch = BatchVerifier::new();
            for (key, digest, signature) in items {
                batch.queue(key, digest, signature);
            }
            batch.verify()
        }
    }
}

/// The curve25519-dalek backend that does the curve arithmetic of every signature check in
/// this process. The set built is fixed at compile time by the `curve25519_dalek_backend`
/// cfg (this workspace's `.cargo/config.toml` sets `avx512` on x86_64, which builds IFMA and
/// AVX2); among those, the CPU's features choose at run time, detected here as
/// curve25519-dalek detects them (cpufeatures, the same version). Every backend gives the
/// same verdicts; they differ in speed only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurveBackend {
    /// AVX-512 IFMA (52-bit multiply-accumulate) with AVX-512VL.
    Avx512Ifma,
    /// AVX2.
    Avx2,
    /// 64- or 32-bit portable arithmetic (the `serial` or `fiat` backend).
    Portable,
}

impl fmt::Display for CurveBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CurveBackend::Avx512Ifma => "avx512ifma",
            CurveBackend::Avx2 => "avx2",
            CurveBackend::Portable => "portable",
        })
    }
}

/// Which backend this build runs on this CPU (see [`CurveBackend`]).
pub fn curve_backend() -> CurveBackend {
    // As curve25519-dalek's build script decides: IFMA is built when asked for, or by
    // default when the whole build targets a CPU that has it.
    #[cfg(all(
        target_arch = "x86_64",
        target_pointer_width = "64",
        any(
            curve25519_dalek_backend = "avx512",
            all(
                not(any(
                    curve25519_dalek_backend = "simd",
                    curve25519_dalek_backend = "serial",
                    curve25519_dalek_backend = "fiat"
                )),
                target_feature = "avx512ifma",
                target_feature = "avx512vl"
            )
        )
    ))]
    {
        cpufeatures::new!(ifma, "avx512ifma", "avx512vl");
        if ifma::get() {
            return CurveBackend::Avx512Ifma;
        }
    }
    // On x86_64 curve25519-dalek builds AVX2 unless told to build only a portable backend.
    #[cfg(all(
        target_arch = "x86_64",
        target_pointer_width = "64",
        not(any(curve25519_dalek_backend = "serial", curve25519_dalek_backend = "fiat"))
    ))]
    {
        cpufeatures::new!(avx2, "avx2");
        if avx2::get() {
            return CurveBackend::Avx2;
        }
    }
    CurveBackend::Portable
}

/// Hashes one byte string under a domain tag.
pub(crate) fn digest_of(domain: &[u8], bytes: &[u8]) -> Digest {
    Hasher::new(domain).bytes(bytes).finish()
}

mod parallel;
#[cfg(test)]
mod tests;

pub(crate) use parallel::Pool;
pub use parallel::{CheckPool, InlineChecks};
