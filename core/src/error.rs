//! The one error type at the core's boundary: why an input was rejected.
//!
//! A rejected input changes nothing but a counter; the replica keeps serving.

use crate::certificate::CertificateError;
use crate::config::ReplicaId;
use crate::crypto::CryptoError;
use crate::envelope::DecodeError;
use crate::view_change::ViewChangeError;

/// Why the core rejected an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a message.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// A key or signature fails the acceptance rule.
    #[error("rejected signature: {0}")]
    Crypto(#[from] CryptoError),
    /// A consensus message arrived from, or names, a key outside the validator set.
    #[error("consensus message from a non-validator")]
    NotAValidator,
    /// The message's signer is not who must send it (e.g. a pre-prepare not from the primary).
    #[error("message signed by {0}, who may not send it")]
    WrongSigner(ReplicaId),
    /// A message of a phase that cannot travel alone (a bare pre-prepare vote).
    #[error("unexpected {0} message")]
    UnexpectedMessage(&'static str),
    /// The message is for an older view.
    #[error("message for view {got}, now in view {current}")]
    StaleView {
        /// The message's view.
        got: u64,
        /// The replica's view.
        current: u64,
    },
    /// The message is for a later view than the replica has reached.
    #[error("message for view {got}, still in view {current}")]
    FutureView {
        /// The message's view.
        got: u64,
        /// The replica's view.
        current: u64,
    },
    /// The sequence number is outside the window and cannot be buffered.
    #[error("sequence {seq} outside the window [{low}, {high}]")]
    OutOfWindow {
        /// The message's sequence number.
        seq: u64,
        /// Lowest sequence number accepted.
        low: u64,
        /// Highest sequence number accepted.
        high: u64,
    },
    /// The peer's buffer for messages ahead of the window is full.
    #[error("too many messages ahead of the window from this peer")]
    FutureBufferFull,
    /// Already seen: nothing to do.
    #[error("duplicate message")]
    Duplicate,
    /// A vote for a certificate this replica already completed; dropped unchecked.
    #[error("vote for a certificate already complete")]
    NotNeeded,
    /// A second, different vote from one validator for one slot; reported as evidence.
    #[error("{0} signed two different votes for one slot")]
    Equivocation(ReplicaId),
    /// The pre-prepare's digest is not the Merkle root of its batch.
    #[error("batch does not match its digest")]
    BatchDigestMismatch,
    /// The batch is empty, has too many requests or too many bytes.
    #[error("batch is empty or over the size limits")]
    BatchTooLarge,
    /// The batch carries the same request twice, or one already in another slot; or a
    /// request arrives that this replica holds already (in flight at the primary, or watched
    /// at a backup, where a copy with other signature bytes is refused unchecked).
    #[error("request is already in the log or held")]
    DuplicateRequest,
    /// The request's operation exceeds the configured maximum.
    #[error("operation of {len} bytes exceeds {max}")]
    RequestTooLarge {
        /// Operation bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An attested request names a gateway that does not attest in its epoch
    /// ([`crate::Replica::attesting_gateways`]; none do in end-to-end mode).
    #[error("request attested by a gateway that does not attest in this epoch")]
    UnknownGateway,
    /// An attested request's path to its gateway's signed root is malformed.
    #[error("malformed gateway attestation")]
    BadAttestation,
    /// Another request of this client executed under this number: this one never will.
    #[error("another request of this client executed under this number")]
    NumberTaken,
    /// The client already executed a request with this number or a higher one.
    #[error("request number already executed for this client")]
    StaleRequest,
    /// A proposal for a seq that committed here with another batch (Castro and Liskov: a
    /// committed slot keeps its digest in every later view).
    #[error("proposal for seq {seq}, which committed with another batch")]
    ConflictsWithCommit {
        /// The seq.
        seq: u64,
    },
    /// The primary's queue of pending requests is full; the client should retry later.
    #[error("pending request queue is full")]
    Overloaded,
    /// The host broke the contract (e.g. reported execution out of order); the text says how.
    #[error("host contract violated: {0}")]
    HostContract(&'static str),
    /// A view change or new view that does not verify.
    #[error("invalid view change: {0}")]
    ViewChange(#[from] ViewChangeError),
    /// A certificate (QC or stable checkpoint) that does not verify.
    #[error("invalid certificate: {0}")]
    Certificate(#[from] CertificateError),
    /// This validator was removed from the set by an epoch change and takes no more part.
    #[error("this validator was removed from the validator set")]
    Retired,
    /// A message of another epoch than this replica's.
    #[error("message of epoch {got}, this replica is in epoch {current}")]
    OtherEpoch {
        /// The message's epoch.
        got: u64,
        /// This replica's.
        current: u64,
    },
    /// A message of the current view while this replica waits for the view's new view.
    #[error("waiting for the new view")]
    ViewChanging,
    /// The peer asked for retransmissions again too soon; it is served once per interval.
    #[error("retransmission asked for too soon")]
    RateLimited,
    /// The peer spent its share of signature checks on view-change traffic
    /// ([`crate::Config::view_change_checks_per_sec`]); its view change or new view was
    /// dropped unchecked.
    #[error("the peer's share of view-change signature checks is spent")]
    OverBudget,
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
            Error::UnknownGateway => "unknown_gateway",
            Error::BadAttestation => "bad_attestation",
            Error::NumberTaken => "number_taken",
            Error::StaleRequest => "stale_request",
            Error::ConflictsWithCommit { .. } => "conflicts_with_commit",
            Error::Overloaded => "overloaded",
            Error::HostContract(_) => "host_contract",
            Error::ViewChange(_) => "invalid_view_change",
            Error::Certificate(_) => "invalid_certificate",
            Error::Retired => "retired",
            Error::OtherEpoch { .. } => "other_epoch",
            Error::ViewChanging => "view_changing",
            Error::RateLimited => "rate_limited",
            Error::OverBudget => "over_budget",
        }
    }
}
