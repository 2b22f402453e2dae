//! Length-delimited frames on a byte stream: a 4-byte big-endian length, then the payload;
//! and the loops that read and write them over any transport's [`ReadHalf`] and
//! [`WriteHalf`].
//!
//! The decoder refuses a length above the configured maximum as soon as the prefix arrives,
//! before it buffers a byte of the payload, so a peer cannot make a node allocate more than
//! one maximum-size frame.

use std::future::Future;

use crate::queue::Frames;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Why a stream cannot be read as frames. After an error the connection must be closed:
/// the stream has lost its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The prefix announces a frame above the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Prefixes `payload` with its length. Fails if it is above `max`, so a node never sends
/// what its peers would refuse.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let len = payload.len();
    if len > max || u32::try_from(len).is_err() {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut frame = Vec::with_capacity(PREFIX_LEN + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Reassembles frames from stream chunks of any size.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    buffer: Vec<u8>,
}

impl Decoder {
    /// A decoder that accepts frames of at most `max` payload bytes.
    pub fn new(max: usize) -> Self {
        Decoder {
            max,
            buffer: Vec::new(),
        }
    }

    /// Bytes held for an incomplete frame (at most `max + 4`).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Adds bytes from the stream and returns every frame they complete, in order.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            // Take only what the current frame still needs, so the buffer stays bounded.
            let wanted = match self.announced()? {
                Some(len) => PREFIX_LEN + len - self.buffer.len(),
                None => PREFIX_LEN - self.buffer.len(),
            };
            let (now, rest) = bytes.split_at(wanted.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            // A frame is complete once its payload is in (at once for an empty one).
            if let Some(len) = self.announced()?
                && self.buffer.len() == PREFIX_LEN + len
            {
                let frame = self.buffer.split_off(PREFIX_LEN);
                self.buffer.clear();
                frames.push(frame);
            }
        }
        Ok(frames)
    }

    /// The payload length of the frame being read, once its prefix is complete.
    fn announced(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buffer.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        Ok(Some(len))
    }
}

/// Why a stream of frames ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The peer finished the stream between frames, or the connection closed.
    Closed,
    /// The stream ended in the middle of a frame.
    Truncated,
    /// A length prefix above the maximum.
    Oversized,
    /// The other side completed no frame for longer than its connection may stay idle.
    Idle,
    /// The other side took nothing the node wrote for longer than a write may wait.
    Stalled,
    /// The validator's key left the set while it was connected (an epoch began without it).
    Removed,
}

impl StreamEnd {
    /// How a stream that stopped delivering bytes ended, given what `decoder` still holds.
    pub fn at_end(decoder: &Decoder) -> StreamEnd {
        match decoder.buffered() {
            0 => StreamEnd::Closed,
            _ => StreamEnd::Truncated,
        }
    }
}

/// Frames `first` and whatever else `queue` holds right now (up to 256 KiB), for one write.
/// A frame above `max` is dropped: the other side would only refuse it.
pub fn gather(first: Vec<u8>, queue: &Frames, max: usize) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        if let Ok(encoded) = encode(&frame, max) {
            buffer.extend_from_slice(&encoded);
        }
        if buffer.len() < 256 * 1024 {
            next = queue.try_recv();
        }
    }
    buffer
}

/// The receiving half of a connection, as its transport delivers the bytes (decrypted,
/// in order): what [`read_frames`] reads from.
pub trait ReadHalf: Send {
    /// The next bytes the other side sent, however many arrived; `None` once the stream
    /// ended or failed.
    fn read(&mut self) -> impl Future<Output = Option<&[u8]>> + Send;
}

/// The sending half of a connection: what [`write_frames`] writes to.
pub trait WriteHalf: Send {
    /// Writes all of `bytes`; `Err` once the stream failed (it is not written to again).
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Reads frames from `reader` and hands each to `deliver`, until the stream ends, its
/// framing breaks, or `deliver` returns false (the node stopped).
pub async fn read_frames<R, F, Fut>(reader: &mut R, max: usize, mut deliver: F) -> StreamEnd
where
    R: ReadHalf,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut decoder = Decoder::new(max);
    loop {
        let Some(bytes) = reader.read().await else {
            return StreamEnd::at_end(&decoder);
        };
        let frames = match decoder.push(bytes) {
            Ok(frames) => frames,
            Err(_) => return StreamEnd::Oversized,
        };
        for frame in frames {
            if !deliver(frame).await {
                return StreamEnd::Closed;
            }
        }
    }
}

/// Writes the frames queued for one connection, several per write, until the queue closes
/// or the stream fails. Returns whether the queue is still open (false: the connection
/// should close for good).
pub async fn write_frames<W: WriteHalf>(writer: &mut W, queue: &Frames, max: usize) -> bool {
    while let Some(first) = queue.recv().await {
        if writer.write(&gather(first, queue, max)).await.is_err() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_chunking() {
        let payloads: Vec<Vec<u8>> =
            vec![b"a".to_vec(), vec![7; 300], Vec::new(), b"last".to_vec()];
        let stream: Vec<u8> = payloads
            .iter()
            .flat_map(|p| encode(p, 1000).unwrap())
            .collect();
        for chunk in [1, 2, 3, 5, 64, stream.len()] {
            let mut decoder = Decoder::new(1000);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                out.extend(decoder.push(piece).unwrap());
            }
            assert_eq!(out, payloads, "chunk size {chunk}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_any_payload_is_buffered() {
        let mut decoder = Decoder::new(16);
        let prefix = 1_000_000u32.to_be_bytes();
        assert_eq!(
            decoder.push(&prefix),
            Err(FrameError::TooLarge {
                len: 1_000_000,
                max: 16
            })
        );
        assert!(decoder.buffered() <= PREFIX_LEN);
        assert_eq!(
            encode(&[0; 17], 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
    }

    #[test]
    fn a_truncated_frame_waits_for_the_rest() {
        let frame = encode(b"hello", 16).unwrap();
        let mut decoder = Decoder::new(16);
        assert!(decoder.push(&frame[..6]).unwrap().is_empty());
        assert_eq!(decoder.buffered(), 6);
        assert_eq!(decoder.push(&frame[6..]).unwrap(), vec![b"hello".to_vec()]);
    }

    #[test]
    fn frames_read_from_any_half_reach_deliver_in_order_until_the_stream_ends() {
        use crate::testing::{Chunks, block_on};
        let stream: Vec<u8> = [b"one".as_slice(), b"two", b"three"]
            .iter()
            .flat_map(|p| encode(p, 16).unwrap())
            .collect();
        let mut reader = Chunks::new(stream.chunks(5).map(<[u8]>::to_vec));
        let mut delivered = Vec::new();
        let end = block_on(read_frames(&mut reader, 16, |frame| {
            delivered.push(frame);
            async { true }
        }));
        assert_eq!(end, StreamEnd::Closed);
        assert_eq!(
            delivered,
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );

        // Cut short, oversized, or refused by the node.
        let cut = Chunks::new([stream[..9].to_vec()]);
        let oversized = Chunks::new([stream[..7].to_vec(), u32::MAX.to_be_bytes().to_vec()]);
        for (mut reader, accept, expected) in [
            (cut, true, StreamEnd::Truncated),
            (oversized, true, StreamEnd::Oversized),
            (Chunks::new([stream.clone()]), false, StreamEnd::Closed),
        ] {
            let mut count = 0;
            let end = block_on(read_frames(&mut reader, 16, |_| {
                count += 1;
                async move { accept }
            }));
            assert_eq!(end, expected);
            assert_eq!(
                count, 1,
                "{expected:?}: the frame before the end, or the refused one"
            );
        }
    }

    #[test]
    fn queued_frames_go_out_together_until_the_queue_closes_or_the_stream_fails() {
        use crate::testing::{Writes, block_on};
        let (tx, rx) = crate::queue::bounded(8, 1024, None);
        for frame in [b"a".to_vec(), b"bc".to_vec(), vec![0; 17]] {
            tx.try_send(frame).unwrap();
        }
        tx.close();
        let mut writer = Writes::default();
        assert!(
            !block_on(write_frames(&mut writer, &rx, 16)),
            "the queue closed"
        );
        // One write for all three; the frame above the maximum is dropped.
        let expected = [encode(b"a", 16).unwrap(), encode(b"bc", 16).unwrap()].concat();
        assert_eq!(writer.writes, [expected]);

        let (tx, rx) = crate::queue::bounded(8, 1024, None);
        tx.try_send(b"a".to_vec()).unwrap();
        let mut broken = Writes {
            broken: true,
            ..Writes::default()
        };
        assert!(
            block_on(write_frames(&mut broken, &rx, 16)),
            "the queue is still open"
        );
    }
}
