//! A validator's signed word that it will not order a client's request, and why: the answer
//! a client shows instead of waiting out its timeout.
//!
//! Signed, not only sent over the authenticated link, so that a client accepts a refusal only
//! once f + 1 validators signed the same reason (one of them is honest), whichever way the
//! refusals reached it, and so that a refusal names the very request it refuses (its digest):
//! a refusal of another request under the same number, which anyone can make validators sign
//! by sending one, never passes for this one's. What a flood of refused requests can make a
//! validator sign is bounded ([`REFUSALS_PER_SECOND`], [`REFUSALS_PER_CLIENT_PER_SECOND`]).

use serde::{Deserialize, Serialize};

use crate::config::{ChainId, ReplicaId};
use crate::crypto::{Digest, Hasher, Keypair, PublicKey, Signature};

/// Refusals one validator signs per second, for all clients together (about 20 µs of its
/// thread each): a flood of refused requests costs it at most 0.4 % of a core.
pub const REFUSALS_PER_SECOND: u32 = 200;
/// Refusals one validator signs per second for one client key: enough for a client's request
/// and its retransmissions, so one key cannot take the whole of [`REFUSALS_PER_SECOND`].
pub const REFUSALS_PER_CLIENT_PER_SECOND: u8 = 4;

/// Why a validator will not order a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RefusalReason {
    /// The request's number is spent: this client's requests up to `last` executed, or were
    /// forgotten below the exactly-once floor ([`crate::Config::max_clients`]). A client
    /// numbers its next request above `last`.
    #[error("request number spent: this key's requests up to number {last} executed already")]
    Stale {
        /// The highest number of this client the validator holds spent.
        last: u64,
    },
    /// Another request of this client executed under this very number: the key signs in two
    /// places at once, or a gateway attested another operation in its place.
    #[error("another request of this key executed under this number")]
    NumberTaken,
    /// The operation (or the request with its attestation) is over the network's limit.
    #[error("request of {len} bytes; the network takes at most {max}")]
    TooLarge {
        /// Its size, in bytes.
        len: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// The request is attested by a key that attests for no client in this epoch (a gateway
    /// removed by governance, or never listed).
    #[error("attested by a gateway that does not attest in this epoch")]
    UnknownGateway,
    /// The validator holds as many requests waiting for a batch as it may
    /// ([`crate::Config::max_pending_requests`]).
    #[error("the validator's queue of waiting requests is full; retry later")]
    Overloaded,
}

impl RefusalReason {
    /// Whether two validators' refusals say the same: equal reasons, or both a spent number
    /// (validators that executed different prefixes hold different `last`s).
    pub fn agrees_with(&self, other: &RefusalReason) -> bool {
        match (self, other) {
            (RefusalReason::Stale { .. }, RefusalReason::Stale { .. }) => true,
            _ => self == other,
        }
    }

    fn hash_into(&self, hasher: &mut Hasher) {
        match *self {
            RefusalReason::Stale { last } => hasher.u64(0).u64(last),
            RefusalReason::NumberTaken => hasher.u64(1),
            RefusalReason::TooLarge { len, max } => hasher.u64(2).u64(len).u64(max),
            RefusalReason::UnknownGateway => hasher.u64(3),
            RefusalReason::Overloaded => hasher.u64(4),
        };
    }
}

/// A validator's signed refusal of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRefusal {
    /// The client the request is of.
    pub client: PublicKey,
    /// The request's number.
    pub client_seq: u64,
    /// The refused request's digest ([`crate::Request::digest`]).
    pub request: Digest,
    /// Why.
    pub reason: RefusalReason,
    /// The validator that refused, by its id in the epoch the signature names.
    pub replica: ReplicaId,
    /// Signature over [`refusal_digest`].
    pub signature: Signature,
}

impl RequestRefusal {
    /// Builds and signs a refusal of (client, number, digest) in `epoch`.
    pub fn new(
        (chain, epoch): (&ChainId, u64),
        (client, client_seq, request): (PublicKey, u64, Digest),
        reason: RefusalReason,
        replica: ReplicaId,
        key: &Keypair,
    ) -> RequestRefusal {
        let signed = refusal_digest(chain, epoch, (&client, client_seq, &request), &reason);
        RequestRefusal {
            client,
            client_seq,
            request,
            reason,
            replica,
            signature: key.sign(&signed),
        }
    }

    /// The digest the signature covers, in `epoch`.
    pub fn signed_digest(&self, chain: &ChainId, epoch: u64) -> Digest {
        refusal_digest(
            chain,
            epoch,
            (&self.client, self.client_seq, &self.request),
            &self.reason,
        )
    }
}

/// What a refusal's signature covers: the chain, the epoch whose set the signer is in, the
/// request (client, number, digest) and the reason.
pub fn refusal_digest(
    chain: &ChainId,
    epoch: u64,
    (client, client_seq, request): (&PublicKey, u64, &Digest),
    reason: &RefusalReason,
) -> Digest {
    let mut hasher = Hasher::new(b"pbft/v1/refusal");
    hasher
        .digest(&chain.0)
        .u64(epoch)
        .bytes(&client.0)
        .u64(client_seq)
        .digest(request);
    reason.hash_into(&mut hasher);
    hasher.finish()
}
