//! What a gateway is configured with, what it hands its host, and what it counts: its limits
//! and timers ([`GatewayConfig`]), its refusals ([`Shed`]), its outputs and its metrics.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::config::{ChainId, ConfigError, ReplicaId};
use crate::crypto::PublicKey;
use crate::statement::Reply;

/// A gateway's limits and timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The network the requests are signed for.
    pub chain_id: ChainId,
    /// Client sessions open at once, at most.
    pub max_sessions: usize,
    /// Requests one client may have queued or awaiting replies at once.
    pub max_outstanding_per_client: usize,
    /// Requests queued or awaiting replies across all clients, at most.
    pub max_outstanding: usize,
    /// Bytes of requests queued or awaiting replies across all clients, at most.
    pub max_outstanding_bytes: usize,
    /// Requests per second a client may send, sustained (its token bucket's refill rate).
    pub client_rate: u64,
    /// Requests a client may send at once above its rate (its token bucket's size, >= 1).
    pub client_burst: u64,
    /// Requests in one batch sent to a validator, at most.
    pub max_batch_ops: usize,
    /// Encoded request bytes in one batch, at most (a single larger request goes alone).
    pub max_batch_bytes: usize,
    /// Longest a request waits for its batch to fill, in ms.
    pub batch_delay_ms: u64,
    /// Largest operation, in bytes: the network's `max_request_bytes` (a larger one would be
    /// refused by every validator, so the gateway refuses it first).
    pub max_request_bytes: usize,
    /// How long a request waits for f + 1 replies before it goes to every validator, in ms;
    /// each retry doubles it, up to 8×.
    pub retransmit_ms: u64,
    /// How long a request may go unanswered before the gateway gives up on it, in ms
    /// (checked at each retransmission, so it fires up to one back-off interval later).
    pub request_timeout_ms: u64,
    /// Largest reply decoded, in bytes.
    pub max_reply_bytes: usize,
}

impl GatewayConfig {
    /// Defaults for `chain_id`: 16,384 sessions; per client 64 outstanding, 1,000 requests/s
    /// and a burst of 200; 65,536 outstanding in all; batches of 256 requests or 1 MiB after
    /// at most 2 ms; 64 KiB operations; retransmission after 250 ms; give up after 30 s.
    pub fn new(chain_id: ChainId) -> Self {
        GatewayConfig {
            chain_id,
            max_sessions: 16_384,
            max_outstanding_per_client: 64,
            max_outstanding: 65_536,
            max_outstanding_bytes: 64 << 20,
            client_rate: 1_000,
            client_burst: 200,
            max_batch_ops: 256,
            max_batch_bytes: 1 << 20,
            batch_delay_ms: 2,
            max_request_bytes: 64 << 10,
            retransmit_ms: crate::client::DEFAULT_RETRANSMIT_MS,
            request_timeout_ms: 30_000,
            max_reply_bytes: crate::client::DEFAULT_MAX_REPLY_BYTES,
        }
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            (self.max_sessions as u64, "max_sessions must be positive"),
            (
                self.max_outstanding_per_client as u64,
                "max_outstanding_per_client must be positive",
            ),
            (
                self.max_outstanding as u64,
                "max_outstanding must be positive",
            ),
            (
                self.max_outstanding_bytes as u64,
                "max_outstanding_bytes must be positive",
            ),
            (self.client_rate, "client_rate must be positive"),
            (self.client_burst, "client_burst must be positive"),
            (self.max_batch_ops as u64, "max_batch_ops must be positive"),
            (self.retransmit_ms, "retransmit_ms must be positive"),
            (
                self.request_timeout_ms,
                "request_timeout_ms must be positive",
            ),
        ];
        match positive.iter().find(|(value, _)| *value == 0) {
            Some((_, why)) => Err(ConfigError::Invalid(why)),
            None => Ok(()),
        }
    }
}

/// Why the gateway refused a client's session or request. The host answers the client with
/// it; every refusal of a request counts in [`GatewayMetrics::shed`] under [`Shed::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// The gateway holds [`GatewayConfig::max_sessions`] sessions.
    #[error("the gateway serves as many clients as it may; try another gateway")]
    SessionsFull,
    /// The client's key breaks the key rule (non-canonical or small order).
    #[error("the client key is not a valid ed25519 key")]
    BadKey,
    /// No session is open for the request's client.
    #[error("no session is open for this client")]
    NoSession,
    /// The request is signed by another key than the session's.
    #[error("the request is signed by another client than the session's")]
    WrongClient,
    /// The client sent faster than [`GatewayConfig::client_rate`] allows.
    #[error("over the client's rate limit; slow down")]
    RateLimited,
    /// The client has [`GatewayConfig::max_outstanding_per_client`] requests outstanding.
    #[error("the client has as many requests outstanding as it may; wait for replies")]
    ClientBusy,
    /// The gateway holds [`GatewayConfig::max_outstanding`] requests, or
    /// [`GatewayConfig::max_outstanding_bytes`] of them.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// The operation is over [`GatewayConfig::max_request_bytes`].
    #[error("operation of {len} bytes; the network takes at most {max}")]
    TooLarge {
        /// The operation's size, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A request with this client seq is outstanding already.
    #[error("a request with this number is outstanding already")]
    Duplicate,
    /// The client's signature does not verify.
    #[error("the request's signature does not verify")]
    BadSignature,
    /// The client sent a request carrying an attestation: only gateways attest.
    #[error("the request carries an attestation; clients sign or send unsigned requests")]
    Attested,
    /// An unsigned request reached a gateway in end-to-end mode.
    #[error("this gateway forwards only signed requests (the network is end to end)")]
    NotAttesting,
    /// No f + 1 matching replies came within [`GatewayConfig::request_timeout_ms`].
    #[error("no result within the gateway's timeout; the request may still execute")]
    TimedOut,
}

impl Shed {
    /// A short stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Shed::SessionsFull => "sessions_full",
            Shed::BadKey => "bad_key",
            Shed::NoSession => "no_session",
            Shed::WrongClient => "wrong_client",
            Shed::RateLimited => "rate_limited",
            Shed::ClientBusy => "client_busy",
            Shed::Overloaded => "overloaded",
            Shed::TooLarge { .. } => "too_large",
            Shed::Duplicate => "duplicate",
            Shed::BadSignature => "bad_signature",
            Shed::Attested => "attested",
            Shed::NotAttesting => "not_attesting",
            Shed::TimedOut => "timed_out",
        }
    }
}

/// What the gateway hands its host, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayOutput {
    /// Send these bytes (an encoded [`Message::Request`]) to validator `to`.
    Transmit {
        /// The validator.
        to: ReplicaId,
        /// The client whose request it is.
        client: PublicKey,
        /// Whether it goes again, to every validator, because its replies are late: a host
        /// that relays replies by the client's claim sends the claim again first (the
        /// validator may have lost it with a connection).
        again: bool,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// A client's request has its result: hand the client these f + 1 matching replies
    /// (each a [`Message::Reply`] to encode), which it verifies itself.
    Answered {
        /// The client.
        client: PublicKey,
        /// The request answered.
        client_seq: u64,
        /// The seq whose batch held it.
        seq: u64,
        /// f + 1 signed replies with one result, from distinct validators.
        replies: Vec<Reply>,
        /// The epoch changes this client was not handed yet, oldest first: send each (as a
        /// [`Message::EpochChange`](crate::Message::EpochChange)) before the replies, which are
        /// signed in the last one's epoch ([`crate::Client::enter_epoch`] checks them).
        chain: Vec<crate::EpochChange>,
    },
    /// f + 1 validators refused a request the gateway carried, for the same reason: hand the
    /// client these signed refusals (each a [`Message::Refusal`](crate::Message::Refusal) to
    /// encode), which it checks itself ([`crate::Client::handle_message`]).
    Rejected {
        /// The client.
        client: PublicKey,
        /// The request refused.
        client_seq: u64,
        /// f + 1 agreeing refusals, from distinct validators.
        refusals: Vec<crate::RequestRefusal>,
    },
    /// A request the gateway accepted was refused later: tell the client why.
    Refused {
        /// The client.
        client: PublicKey,
        /// The request refused.
        client_seq: u64,
        /// Why.
        reason: Shed,
    },
}

/// What a gateway has done and refused, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayMetrics {
    /// Requests accepted from clients.
    pub requests_accepted: u64,
    /// Requests refused, by [`Shed::label`] (sessions refused count under `sessions_full`
    /// and `bad_key`).
    pub shed: BTreeMap<&'static str, u64>,
    /// Batches sent to a primary.
    pub batches_sent: u64,
    /// Requests in them.
    pub requests_sent: u64,
    /// Requests sent again to every validator because their replies were late.
    pub retransmissions: u64,
    /// Requests answered with f + 1 matching replies.
    pub requests_answered: u64,
    /// Batches of unsigned requests attested, one signature each (gateway-attested mode).
    pub batches_attested: u64,
    /// Client signatures checked (each time checked, in a batch or alone).
    pub signatures_verified: u64,
    /// Replies not counted, by reason (undecodable, not outstanding, bad signature, ...).
    pub replies_rejected: u64,
}
