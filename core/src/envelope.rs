//! The versioned envelope every encoded value of the protocol travels in: one version byte,
//! then the value in postcard. [`crate::Message`] (the wire), [`crate::Record`] (the host's
//! log) and the host's client frames all use it, so a version check and its errors are
//! written once.

use alloc::vec::Vec;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope version this build speaks; the first byte of every envelope.
pub const PROTOCOL_VERSION: u8 = 8;

/// Room for a pre-prepare's fields and envelope around its batch, in bytes.
pub const BATCH_OVERHEAD: usize = 4096;

/// Most bytes a request's encoding adds to its operation: the client key (32), the
/// signature (64), two varints (at most 10 each) and the attestation's tag (1). A batch's
/// size counts requests this way.
pub const REQUEST_OVERHEAD: usize = 32 + 64 + 10 + 10 + 1;

/// Most bytes an attestation adds to a request besides its path's hashes (32 each): the
/// gateway's key (32), the proof's two numbers (at most 5 each) and the path's length (5).
pub const ATTESTATION_OVERHEAD: usize = 32 + 5 + 5 + 5;

/// Why bytes are not an envelope of the expected value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// Longer than the configured maximum; not parsed.
    #[error("message of {len} bytes exceeds {max}")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An envelope version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The body is not a valid encoding of the value.
    #[error("malformed message")]
    Malformed,
    /// A valid value followed by this many extra bytes.
    #[error("{0} bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `value` into an envelope: [`PROTOCOL_VERSION`], then postcard.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    encode_sized(value, 128)
}

/// [`encode`] into a buffer allocated for `capacity` bytes (it grows if they do not fit).
pub(crate) fn encode_sized<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.push(PROTOCOL_VERSION);
    // Serialising into a Vec fails only on allocation failure, which aborts anyway.
    postcard::to_extend(value, out).unwrap_or_default()
}

/// Decodes one envelope of at most `max_len` bytes (the version byte included).
///
/// # Errors
///
/// [`DecodeError`]: too long (checked before parsing), empty, another version, a body that
/// is not a `T`, or bytes after it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|_| DecodeError::Malformed)?;
    match rest.is_empty() {
        true => Ok(value),
        false => Err(DecodeError::TrailingBytes(rest.len())),
    }
}
