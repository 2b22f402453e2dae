//! The one signature rule, against the vectors of "Taming the many EdDSAs" (Chalkias et al.
//! 2020), and the batch check agreeing with the single one.

use super::*;
use alloc::vec::Vec;
use curve25519_dalek::edwards::CompressedEdwardsY;

fn hex<const N: usize>(text: &str) -> [u8; N] {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// The ten vectors of "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko 2020),
/// ed25519-speccheck `cases.json`: (message, public key, signature).
const SPECCHECK: [(&str, &str, &str); 10] = [
    (
        "8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a0000000000000000000000000000000000000000000000000000000000000000",
    ),
    (
        "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04",
    ),
    (
        "aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e",
    ),
    (
        "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
        "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009",
    ),
    (
        "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
        "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09",
    ),
    (
        "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
        "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405",
    ),
    (
        "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
        "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
        "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514",
    ),
    (
        "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
        "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
        "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa19427e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22",
    ),
    (
        "fdaebc429f4a735932a160da1301080c13280eea8bc280d1b392c6b9e6ba3a5a",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f454d370c8d9fc323a41450f8d513eafeb5b0697390c1e505a0d4ddc71f566607",
    ),
    (
        "84b698d39be126ff55fe45079e6c8bf64a0d7db6994560b4e96b7021eb39c1a1",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f084d5b99c2a9463d9c8bd5026916996984eeec87ddf1d3be329006ace1b37b09",
    ),
];

/// Verdict of the single path: the key rule, then the signature.
fn single(message: &Digest, key: &PublicKey, signature: &Signature) -> Result<(), CryptoError> {
    key.verifying_key()?.verify(message, signature)
}

/// Verdict of the batch path, with the vector hidden among valid signatures.
fn batched(message: &Digest, key: &PublicKey, signature: &Signature) -> Result<(), CryptoError> {
    let key = key.verifying_key()?;
    let honest = Keypair::from_seed(&[3; 32]);
    let others: Vec<(Digest, Signature)> = (0..5u64)
        .map(|i| {
            let digest = Hasher::new(b"filler").u64(i).finish();
            (digest, honest.sign(&digest))
        })
        .collect();
    let mut batch = BatchVerifier::new();
    for (digest, sig) in &others[..2] {
        batch.queue(honest.verifying_key(), digest, sig);
    }
    batch.queue(&key, message, signature);
    for (digest, sig) in &others[2..] {
        batch.queue(honest.verifying_key(), digest, sig);
    }
    batch.verify()
}

#[test]
fn speccheck_vectors_get_one_verdict_on_every_path() {
    use CryptoError::*;
    // ZIP-215 (cofactored, non-canonical R allowed, canonical s) plus our key rule.
    let expected = [
        Err(SmallOrderKey), // 0: small-order A and R
        Err(SmallOrderKey), // 1: small-order A
        Ok(()),             // 2: mixed-order A, small-order R
        Ok(()),             // 3: passes both equations
        Ok(()),             // 4: passes the cofactored equation only
        Ok(()),             // 5: passes the cofactored equation only
        Err(BadSignature),  // 6: s >= L
        Err(BadSignature),  // 7: s >> L
        Err(BadSignature),  // 8: non-canonical R, k hashed over the reduced R
        Ok(()),             // 9: non-canonical R, k hashed over R as sent
    ];
    for (case, (message, key, signature)) in SPECCHECK.iter().enumerate() {
        let (message, key, signature) = (
            Digest(hex(message)),
            PublicKey(hex(key)),
            Signature(hex(signature)),
        );
        let one = single(&message, &key, &signature);
        let many = batched(&message, &key, &signature);
        assert_eq!(one, many, "case {case}: single and batch disagree");
        assert_eq!(one, expected[case], "case {case}");
    }
}

#[test]
fn the_small_order_list_is_exactly_the_torsion_subgroup() {
    let mut distinct = alloc::collections::BTreeSet::new();
    for bytes in SMALL_ORDER_ENCODINGS {
        let point = CompressedEdwardsY(bytes)
            .decompress()
            .expect("a curve point");
        assert!(point.is_small_order());
        assert_eq!(point.compress().0, bytes, "canonical");
        distinct.insert(bytes);
    }
    // The torsion subgroup has eight elements, each with one canonical encoding.
    assert_eq!(distinct.len(), 8);
}

#[test]
fn the_byte_rule_agrees_with_curve_arithmetic_on_random_and_edge_keys() {
    let mut candidates: Vec<[u8; 32]> = (0..2000u64)
        .map(|i| Hasher::new(b"keys").u64(i).finish().0)
        .collect();
    for low in 0xe0..=0xffu8 {
        let mut y = [0xff; 32];
        y[0] = low;
        y[31] = 0x7f;
        candidates.push(y);
        y[31] = 0xff;
        candidates.push(y);
    }
    for bytes in candidates {
        let compressed = CompressedEdwardsY(bytes);
        let Some(point) = compressed.decompress() else {
            continue;
        };
        let expected = if point.compress() != compressed {
            Err(CryptoError::NonCanonicalKey)
        } else if point.is_small_order() {
            Err(CryptoError::SmallOrderKey)
        } else {
            Ok(())
        };
        assert_eq!(PublicKey(bytes).check(), expected, "{bytes:02x?}");
    }
}

#[test]
fn non_canonical_and_invalid_key_encodings_are_rejected() {
    // y = p (non-canonical encoding of y = 0, a small-order point) and y = 2 (not on the curve).
    let mut y_is_p = [0xff; 32];
    y_is_p[0] = 0xed;
    y_is_p[31] = 0x7f;
    assert!(PublicKey(y_is_p).verifying_key().is_err());
    let mut not_on_curve = [0; 32];
    not_on_curve[0] = 2;
    assert_eq!(
        PublicKey(not_on_curve).verifying_key().err(),
        Some(CryptoError::MalformedKey)
    );
    // The identity (y = 1) has order 1.
    let mut identity = [0; 32];
    identity[0] = 1;
    assert_eq!(
        PublicKey(identity).verifying_key().err(),
        Some(CryptoError::SmallOrderKey)
    );
    // y = 1 + p: a non-canonical encoding of a curve point is refused as such.
    let mut y_is_p_plus_1 = y_is_p;
    y_is_p_plus_1[0] = 0xee;
    assert_eq!(
        PublicKey(y_is_p_plus_1).verifying_key().err(),
        Some(CryptoError::NonCanonicalKey)
    );
}

#[test]
fn honest_signatures_verify_alone_and_in_batches_and_tampering_fails_both() {
    let key = Keypair::from_seed(&[9; 32]);
    let digest = Hasher::new(b"test").u64(1).finish();
    let signature = key.sign(&digest);
    assert_eq!(key.verifying_key().verify(&digest, &signature), Ok(()));
    let mut tampered = signature;
    tampered.0[5] ^= 1;
    assert!(key.verifying_key().verify(&digest, &tampered).is_err());
    let other = Hasher::new(b"test").u64(2).finish();
    let items = [
        (key.verifying_key(), &digest, &signature),
        (key.verifying_key(), &other, &key.sign(&other)),
    ];
    assert_eq!(verify_all(&items), Ok(()));
    let bad = [
        (key.verifying_key(), &digest, &signature),
        (key.verifying_key(), &other, &tampered),
    ];
    assert_eq!(verify_all(&bad), Err(CryptoError::BadSignature));
}

#[test]
fn batch_weights_are_deterministic() {
    let mut a = TranscriptRng {
        seed: Digest([1; 32]),
        counter: 0,
    };
    let mut b = TranscriptRng {
        seed: Digest([1; 32]),
        counter: 0,
    };
    let (mut x, mut y) = ([0u8; 40], [0u8; 40]);
    rand_core::TryRng::try_fill_bytes(&mut a, &mut x).unwrap();
    rand_core::TryRng::try_fill_bytes(&mut b, &mut y).unwrap();
    assert_eq!(x, y);
    assert_ne!(x[..32], x[8..40]);
}
