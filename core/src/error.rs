//! The one error type at the core's boundary: why an input was rejected.
//!
//! A rejected input changes nothing but a counter; the replica keeps serving.

use core::fmt;

use crate::certificate::CertificateError;
use crate::config::ReplicaId;
use crate::crypto::CryptoError;
use crate::envelope::DecodeError;
use crate::view_change::ViewChangeError;

/// Why the core rejected an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not a message.
    Decode(DecodeError),
    /// A key or signature fails the acceptance rule.
    Crypto(CryptoError),
    /// A consensus message arrived from, or names, a key outside the validator set.
    NotAValidator,
    /// The message's signer is not who must send it (e.g. a pre-prepare not from the primary).
    WrongSigner(ReplicaId),
    /// A message of a phase that cannot travel alone (a bare pre-prepare vote).
    UnexpectedMessage(&'static str),
    /// The message is for an older view.
    StaleView {
        /// The message's view.
        got: u64,
        /// The replica's view.
        current: u64,
    },
    /// The message is for a later view than the replica has reached.
    FutureView {
        /// The message's view.
        got: u64,
        /// The replica's view.
        current: u64,
    },
    /// The sequence number is outside the window and cannot be buffered.
    OutOfWindow {
        /// The message's sequence number.
        seq: u64,
        /// Lowest sequence number accepted.
        low: u64,
        /// Highest sequence number accepted.
        high: u64,
    },
    /// The peer's buffer for messages ahead of the window is full.
    FutureBufferFull,
    /// Already seen: nothing to do.
    Duplicate,
    /// A vote for a certificate this replica already completed; dropped unchecked.
    NotNeeded,
    /// A second, different vote from one validator for one slot; reported as evidence.
    Equivocation(ReplicaId),
    /// The pre-prepare's digest is not the Merkle root of its batch.
    BatchDigestMismatch,
    /// The batch is empty, has too many requests or too many bytes.
    BatchTooLarge,
    /// The batch carries the same request twice, or one already in another slot.
    DuplicateRequest,
    /// The request's operation exceeds the configured maximum.
    RequestTooLarge {
        /// Operation bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The client already executed a request with this number or a higher one.
    StaleRequest,
    /// A proposal for a seq that committed here with another batch (Castro and Liskov: a
    /// committed slot keeps its digest in every later view).
    ConflictsWithCommit {
        /// The seq.
        seq: u64,
    },
    /// The primary's queue of pending requests is full; the client should retry later.
    Overloaded,
    /// This replica is not the primary and cannot take the action.
    NotPrimary,
    /// The host broke the contract (e.g. reported execution out of order); the text says how.
    HostContract(&'static str),
    /// A view change or new view that does not verify.
    ViewChange(ViewChangeError),
    /// A certificate (QC or stable checkpoint) that does not verify.
    Certificate(CertificateError),
    /// A message of the current view while this replica waits for the view's new view.
    ViewChanging,
    /// The peer asked for retransmissions again too soon; it is served once per interval.
    RateLimited,
}

impl Error {
    /// A stable label for metrics: one per variant.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Decode(_) => "decode",
            Error::Crypto(CryptoError::BadSignature) => "bad_signature",
            Error::Crypto(_) => "bad_key",
            Error::NotAValidator => "not_a_validator",
            Error::WrongSigner(_) => "wrong_signer",
            Error::UnexpectedMessage(_) => "unexpected_message",
            Error::StaleView { .. } => "stale_view",
            Error::FutureView { .. } => "future_view",
            Error::OutOfWindow { .. } => "out_of_window",
            Error::FutureBufferFull => "future_buffer_full",
            Error::Duplicate => "duplicate",
            Error::NotNeeded => "not_needed",
            Error::Equivocation(_) => "equivocation",
            Error::BatchDigestMismatch => "batch_digest_mismatch",
            Error::BatchTooLarge => "batch_too_large",
            Error::DuplicateRequest => "duplicate_request",
            Error::RequestTooLarge { .. } => "request_too_large",
            Error::StaleRequest => "stale_request",
            Error::ConflictsWithCommit { .. } => "conflicts_with_commit",
            Error::Overloaded => "overloaded",
            Error::NotPrimary => "not_primary",
            Error::HostContract(_) => "host_contract",
            Error::ViewChange(_) => "invalid_view_change",
            Error::Certificate(_) => "invalid_certificate",
            Error::ViewChanging => "view_changing",
            Error::RateLimited => "rate_limited",
        }
    }
}

impl From<DecodeError> for Error {
    fn from(err: DecodeError) -> Self {
        Error::Decode(err)
    }
}

impl From<ViewChangeError> for Error {
    fn from(err: ViewChangeError) -> Self {
        Error::ViewChange(err)
    }
}

impl From<CertificateError> for Error {
    fn from(err: CertificateError) -> Self {
        Error::Certificate(err)
    }
}

impl From<CryptoError> for Error {
    fn from(err: CryptoError) -> Self {
        Error::Crypto(err)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Decode(err) => write!(f, "undecodable message: {err}"),
            Error::Crypto(err) => write!(f, "rejected signature: {err}"),
            Error::NotAValidator => f.write_str("consensus message from a non-validator"),
            Error::WrongSigner(id) => write!(f, "message signed by {id}, who may not send it"),
            Error::UnexpectedMessage(kind) => write!(f, "unexpected {kind} message"),
            Error::StaleView { got, current } => {
                write!(f, "message for view {got}, now in view {current}")
            }
            Error::FutureView { got, current } => {
                write!(f, "message for view {got}, still in view {current}")
            }
            Error::OutOfWindow { seq, low, high } => {
                write!(f, "sequence {seq} outside the window [{low}, {high}]")
            }
            Error::FutureBufferFull => {
                f.write_str("too many messages ahead of the window from this peer")
            }
            Error::Duplicate => f.write_str("duplicate message"),
            Error::NotNeeded => f.write_str("vote for a certificate already complete"),
            Error::Equivocation(id) => write!(f, "{id} signed two different votes for one slot"),
            Error::BatchDigestMismatch => f.write_str("batch does not match its digest"),
            Error::BatchTooLarge => f.write_str("batch is empty or over the size limits"),
            Error::DuplicateRequest => f.write_str("request is already in the log"),
            Error::RequestTooLarge { len, max } => {
                write!(f, "operation of {len} bytes exceeds {max}")
            }
            Error::StaleRequest => f.write_str("request number already executed for this client"),
            Error::ConflictsWithCommit { seq } => {
                write!(
                    f,
                    "proposal for seq {seq}, which committed with another batch"
                )
            }
            Error::Overloaded => f.write_str("pending request queue is full"),
            Error::NotPrimary => f.write_str("this replica is not the primary"),
            Error::HostContract(why) => write!(f, "host contract violated: {why}"),
            Error::ViewChange(err) => write!(f, "invalid view change: {err}"),
            Error::Certificate(err) => write!(f, "invalid certificate: {err}"),
            Error::ViewChanging => f.write_str("waiting for the new view"),
            Error::RateLimited => f.write_str("retransmission asked for too soon"),
        }
    }
}
