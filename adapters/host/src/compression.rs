//! LZ4 compression of large frames between validators (lz4_flex, pure Rust), for links
//! slower than the CPU: a pre-prepare of 256 signed 128-byte puts shrinks to 0.38–0.93 of
//! its size by payload, and LZ4 compresses at 0.7–1.1 GB/s and expands at 4.5–11.5 GB/s on
//! the development machine (`cargo bench -p pbft-benches --bench compression`), so it saves
//! time only on links below about 2 Gbit/s for JSON-like operations (0.4 Gbit/s for
//! incompressible ones) and never on loopback. Off unless a node's config sets
//! `compress_above_bytes`.
//!
//! A compressed frame is [`COMPRESSED`], then LZ4's block format with the original length in
//! front (4 bytes, little-endian). [`COMPRESSED`] is no protocol version of the core's
//! envelope, so every node that runs this code reads both kinds whatever its own setting
//! (a node from before it refuses compressed frames: turn it on once all are upgraded), and
//! a frame that did not shrink goes as it was. A compressed frame that would expand past the
//! largest message, or more than [`MAX_RATIO`] times, is refused before anything is
//! allocated for it: a peer's bytes buy at most that much expansion work. Decoding checks
//! every offset (lz4_flex's `safe-decode`).

/// The most a compressed frame may expand: a sender compresses only what shrinks less, so
/// an honest frame never does (realistic batches shrink 1.1–2.9x; a run of one byte would
/// reach LZ4's 255x).
pub const MAX_RATIO: usize = 64;

use pbft_core::PROTOCOL_VERSION;

/// The first byte of a compressed frame: never an envelope's protocol version.
pub const COMPRESSED: u8 = 0xFF;

const _: () = assert!(PROTOCOL_VERSION != COMPRESSED);

/// Why a compressed frame cannot be expanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// The frame says it expands past the largest message.
    #[error("compressed frame expands to {len} bytes; the largest message is {max}")]
    TooLarge {
        /// The length it announces.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The LZ4 data is damaged, or does not expand to the length it announces.
    #[error("compressed frame is damaged")]
    Damaged,
}

/// `message` as a validator sends it: compressed if `above` is set, the message is at least
/// that many bytes and it shrinks; else as it is.
pub fn compress(message: Vec<u8>, above: Option<usize>) -> Vec<u8> {
    if above.is_none_or(|above| message.len() < above) {
        return message;
    }
    let mut frame = Vec::with_capacity(1 + 4 + message.len() / 2);
    frame.push(COMPRESSED);
    frame.extend_from_slice(&lz4_flex::compress_prepend_size(&message));
    let shrinks = frame.len() < message.len();
    if shrinks && frame.len().saturating_mul(MAX_RATIO) >= message.len() {
        frame
    } else {
        message
    }
}

/// The message a validator's `frame` carries: expanded if it is compressed (to at most
/// `max` bytes), else the frame itself.
///
/// # Errors
///
/// [`ExpandError`] for a compressed frame that announces more than `max` bytes, is damaged,
/// or expands to another length than it announces.
pub fn expand(frame: Vec<u8>, max: usize) -> Result<Vec<u8>, ExpandError> {
    let Some((&COMPRESSED, packed)) = frame.split_first() else {
        return Ok(frame);
    };
    let (len, data) =
        lz4_flex::block::uncompressed_size(packed).map_err(|_| ExpandError::Damaged)?;
    if len > max {
        return Err(ExpandError::TooLarge { len, max });
    }
    if len > frame.len().saturating_mul(MAX_RATIO) {
        return Err(ExpandError::Damaged);
    }
    let mut message = vec![0; len];
    match lz4_flex::block::decompress_into(data, &mut message) {
        Ok(written) if written == len => Ok(message),
        _ => Err(ExpandError::Damaged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pre-prepare-like message: repetitive fields around incompressible ones.
    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![PROTOCOL_VERSION];
        while bytes.len() < len {
            bytes.extend_from_slice(b"put key-0042 value-value-value ");
            bytes.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    }

    #[test]
    fn a_large_message_goes_compressed_and_expands_to_itself() {
        let original = message(64 << 10);
        let frame = compress(original.clone(), Some(16 << 10));
        assert_eq!(frame[0], COMPRESSED);
        assert!(frame.len() < original.len() / 2, "{} bytes", frame.len());
        assert_eq!(expand(frame, 1 << 20).unwrap(), original);
    }

    #[test]
    fn small_incompressible_and_unconfigured_messages_go_as_they_are() {
        let small = message(100);
        assert_eq!(compress(small.clone(), Some(16 << 10)), small);
        let large = message(64 << 10);
        assert_eq!(compress(large.clone(), None), large, "off");
        let mut noise = vec![PROTOCOL_VERSION];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while noise.len() < 32 << 10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(compress(noise.clone(), Some(1)), noise, "did not shrink");
        assert_eq!(expand(noise.clone(), 1 << 20).unwrap(), noise);
    }

    #[test]
    fn a_frame_that_expands_past_the_limit_or_is_damaged_is_refused() {
        let frame = compress(message(64 << 10), Some(1));
        assert_eq!(
            expand(frame.clone(), 1_000),
            Err(ExpandError::TooLarge {
                len: 64 << 10,
                max: 1_000
            })
        );
        // A bomb: four bytes announcing 4 GiB.
        let bomb = vec![COMPRESSED, 0xFF, 0xFF, 0xFF, 0xFF, 0];
        assert!(matches!(
            expand(bomb, 4 << 20),
            Err(ExpandError::TooLarge { .. })
        ));
        // Within the limit, but more than MAX_RATIO times its size: refused unread.
        let mut dense = vec![COMPRESSED];
        dense.extend_from_slice(&(1u32 << 20).to_le_bytes());
        dense.extend_from_slice(&[0; 100]);
        assert_eq!(expand(dense, 4 << 20), Err(ExpandError::Damaged));
        // And a sender never makes one: a run of one byte goes as it is.
        let run = vec![7; 64 << 10];
        assert_eq!(compress(run.clone(), Some(1)), run);
        let mut cut = frame.clone();
        cut.truncate(frame.len() / 2);
        assert_eq!(expand(cut, 1 << 20), Err(ExpandError::Damaged));
        let mut lying = frame;
        lying[1] = lying[1].wrapping_add(1);
        assert_eq!(
            expand(lying, 1 << 20),
            Err(ExpandError::Damaged),
            "announces one byte more"
        );
        assert_eq!(
            expand(vec![COMPRESSED, 1], 1 << 20),
            Err(ExpandError::Damaged)
        );
    }
}
