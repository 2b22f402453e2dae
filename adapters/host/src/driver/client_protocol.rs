//! What a node does with a client's [`ClientFrame`]: requests go to the core, relay claims
//! are checked and recorded, and status and proof queries are answered within a budget.
//!
//! Replies for a key go to a connection other than that key's own only once the connection
//! proved it may carry them: it relayed a request of that key whose signature verified here,
//! or presented the key's signed relay claim (see [`super::router`] for which proof moves a
//! relay). A frame naming another client without its signature diverts nothing. A relay already proven for this connection is not checked
//! again, so a gateway's steady stream of requests (or a repeated claim) costs a lookup,
//! not a signature check.

use std::collections::HashMap;

use pbft_core::{Digest, Message, PublicKey, Request, Signature};

use super::router::{MAX_FORGERIES_PER_CONNECTION, RelayProof, RelayRefusal, Router};
use crate::application::Application;
use crate::node::Node;
use crate::wire::{ClientFrame, MAX_EPOCHS_PER_ANSWER, ServerFrame, relay_digest};

/// Status and proof queries answered per second, from all clients together: each costs
/// the node's thread up to a batch of hashes, so they get a bounded share of it.
pub const QUERIES_PER_SECOND: u32 = 100;
/// Status and proof queries answered per second for one key: one client cannot take the
/// whole of [`QUERIES_PER_SECOND`] from the others.
pub const QUERIES_PER_KEY_PER_SECOND: u32 = 10;

/// Counts the queries of the current second, in all and per key.
#[derive(Debug, Default)]
pub(super) struct QueryBudget {
    second: u64,
    used: u32,
    /// Keys that asked this second (at most [`QUERIES_PER_SECOND`] of them were answered,
    /// and each costs an entry only once it is answered).
    per_key: HashMap<PublicKey, u32>,
}

impl QueryBudget {
    /// Whether one more query from `key` fits in the second of `now_ms`.
    fn allow(&mut self, key: &PublicKey, now_ms: u64) -> bool {
        if now_ms / 1000 != self.second {
            self.second = now_ms / 1000;
            self.used = 0;
            self.per_key.clear();
        }
        if self.used >= QUERIES_PER_SECOND {
            return false;
        }
        let asked = self.per_key.entry(*key).or_default();
        if *asked >= QUERIES_PER_KEY_PER_SECOND {
            return false;
        }
        *asked += 1;
        self.used += 1;
        true
    }
}

/// The connection a client frame came on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sender {
    /// The key the transport authenticated.
    pub(super) key: PublicKey,
    /// The connection's number ([`super::ClientQueue::connection`]).
    pub(super) connection: u64,
}

/// Feeds one frame from a client connection to the node, and answers it where it asks for
/// an answer; a request goes into `requests`, for [`submit`] before the next peer message or
/// at the end of the round. Bad frames are counted, never fatal.
pub(super) fn handle<A: Application>(
    node: &mut Node<A>,
    router: &Router,
    queries: &mut QueryBudget,
    requests: &mut Vec<(Request, Sender)>,
    from: Sender,
    bytes: &[u8],
    now: u64,
) {
    let metrics = router.metrics();
    if router.is_forging(&from.key, from.connection) {
        // What a connection closed for forging had queued is not worth a signature check.
        metrics.reject("from_forging_connection");
        return;
    }
    let input = match read(bytes, node.max_message_bytes()) {
        Ok(input) => input,
        Err(reason) => return metrics.reject(reason),
    };
    match input {
        ClientInput::Request(request) => {
            if request.client != from.key && !relay_request(node, router, from, &request, now) {
                return;
            }
            requests.push((request, from));
        }
        ClientInput::Relay { client, signature } => {
            if router.relays(&client, &from.key, from.connection, now) {
                return;
            }
            let proof = RelayProof::Claim;
            if let Err(refusal) = router.may_relay(&client, &from.key, from.connection, proof) {
                metrics.reject(refusal.reason());
                return;
            }
            let digest = relay_digest(&node.chain(), &from.key);
            metrics.relay_claim_verified();
            match client
                .verifying_key()
                .and_then(|key| key.verify(&digest, &signature))
            {
                Ok(()) => {
                    router.relay(client, from.key, from.connection, proof, now);
                }
                Err(_) => {
                    metrics.reject("bad_relay_signature");
                    router.forged(&from.key, from.connection);
                }
            }
        }
        ClientInput::Status | ClientInput::Proof { .. } | ClientInput::Epochs { .. }
            if !queries.allow(&from.key, now) =>
        {
            metrics.reject("queries_rate_limited");
        }
        ClientInput::Status => {
            let mut status = node.status(now);
            status.peers_connected = u32::try_from(metrics.peers_connected.get()).unwrap_or(0);
            router.to_client(&from.key, &ServerFrame::Status(status));
        }
        ClientInput::Proof { seq, request } => {
            let proof = node.proof(seq, &request).map(Box::new);
            router.to_client(&from.key, &ServerFrame::Proof(proof));
        }
        ClientInput::Epochs { after } => {
            let changes = node
                .replica()
                .epoch_changes()
                .iter()
                .filter(|change| change.epoch() > after)
                .take(MAX_EPOCHS_PER_ANSWER)
                .cloned()
                .collect();
            router.to_client(&from.key, &ServerFrame::Epochs { after, changes });
        }
    }
}

/// A client frame as the node reads it: the [`ClientFrame`], with the consensus message a
/// [`ClientFrame::Message`] carries decoded too (only a request is taken from a client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientInput {
    /// A request for consensus.
    Request(Request),
    /// [`ClientFrame::Relay`].
    Relay {
        /// The relayed client.
        client: PublicKey,
        /// Its signature over [`relay_digest`].
        signature: Signature,
    },
    /// [`ClientFrame::Status`].
    Status,
    /// [`ClientFrame::Proof`].
    Proof {
        /// The seq the request committed at.
        seq: u64,
        /// The request's digest.
        request: Digest,
    },
    /// [`ClientFrame::Epochs`].
    Epochs {
        /// The last epoch the asker knows.
        after: u64,
    },
}

/// Decodes a client frame as [`handle`] does, consensus messages of at most `max_message`
/// bytes inside; a frame it refuses gives the reason it is counted under in the node's
/// metrics. Public so the fuzz targets decode exactly what a node decodes.
pub fn read(bytes: &[u8], max_message: usize) -> Result<ClientInput, &'static str> {
    match ClientFrame::decode(bytes) {
        Ok(ClientFrame::Message(bytes)) => match Message::decode(&bytes, max_message) {
            Ok(Message::Request(request)) => Ok(ClientInput::Request(request)),
            Ok(_) => Err("client_sent_consensus_message"),
            Err(_) => Err("decode"),
        },
        Ok(ClientFrame::Relay { client, signature }) => {
            Ok(ClientInput::Relay { client, signature })
        }
        Ok(ClientFrame::Status) => Ok(ClientInput::Status),
        Ok(ClientFrame::Proof { seq, request }) => Ok(ClientInput::Proof { seq, request }),
        Ok(ClientFrame::Epochs { after }) => Ok(ClientInput::Epochs { after }),
        Err(_) => Err("bad_client_frame"),
    }
}

/// Hands the client requests gathered since the last peer message to the node, so that a
/// backup checks their signatures in batches: per connection, in its order, in groups no
/// larger than the forgeries the connection has left before it is closed
/// ([`MAX_FORGERIES_PER_CONNECTION`]), and one at a time once it has forged at all. A forged
/// request then costs a search over at most one group of 16 per connection (about 2.5 times
/// 16 batched checks plus 16 alone, once) and single checks after that, and a forging
/// connection is closed after as many forgeries as before. Requests of a connection that
/// ended meanwhile are dropped (nothing could carry their replies, and a forgery there could
/// not be counted). Requests of one client on two connections may be reordered, as the
/// network may reorder them anyway. Refusals are counted in the core's metrics; a forged
/// signature also counts against its connection.
pub(super) fn submit<A: Application>(
    node: &mut Node<A>,
    router: &Router,
    requests: &mut Vec<(Request, Sender)>,
    now: u64,
) {
    if requests.is_empty() {
        return;
    }
    let mut groups: Vec<(Sender, Vec<Request>)> = Vec::new();
    let mut index: HashMap<(PublicKey, u64), usize> = HashMap::new();
    for (request, from) in requests.drain(..) {
        let group = *index.entry((from.key, from.connection)).or_insert_with(|| {
            groups.push((from, Vec::new()));
            groups.len() - 1
        });
        if let Some((_, group)) = groups.get_mut(group) {
            group.push(request);
        }
    }
    for (from, group) in groups {
        let mut group = group.into_iter().peekable();
        while group.peek().is_some() {
            let size = match router.forgeries_left(&from.key, from.connection) {
                Some(MAX_FORGERIES_PER_CONNECTION) => MAX_FORGERIES_PER_CONNECTION as usize,
                Some(left) if left > 0 => 1,
                closing_or_gone => {
                    let reason = match closing_or_gone {
                        Some(_) => "from_forging_connection",
                        None => "from_closed_connection",
                    };
                    for _ in group.by_ref() {
                        router.metrics().reject(reason);
                    }
                    break;
                }
            };
            let chunk: Vec<Request> = group.by_ref().take(size).collect();
            // Requests this connection attested as a listed gateway: it relays their clients'
            // replies once the core took them (their attestations verified).
            let attested: Vec<Option<(PublicKey, u64)>> = chunk
                .iter()
                .map(|request| {
                    let attestation = request.attestation.as_ref()?;
                    let own = attestation.gateway == from.key && node.attests(&from.key);
                    own.then_some((request.client, request.client_seq))
                })
                .collect();
            for (verdict, attested) in node.submit_all(now, chunk).into_iter().zip(attested) {
                match (verdict, attested) {
                    (Err(pbft_core::Error::Crypto(_)), _) => {
                        router.forged(&from.key, from.connection);
                    }
                    (Ok(()), Some((client, client_seq))) => {
                        let proof = RelayProof::Request(client_seq);
                        if router
                            .may_relay(&client, &from.key, from.connection, proof)
                            .is_ok()
                        {
                            router.relay(client, from.key, from.connection, proof, now);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A request `from` relays for another key: routes that key's replies back through `from`
/// once the request's signature verifies (unless this connection proved it already).
/// False, and counted, for a forged request: it goes no further.
fn relay_request<A: Application>(
    node: &mut Node<A>,
    router: &Router,
    from: Sender,
    request: &Request,
    now: u64,
) -> bool {
    if router.relays(&request.client, &from.key, from.connection, now) {
        return true;
    }
    let proof = RelayProof::Request(request.client_seq);
    match router.may_relay(&request.client, &from.key, from.connection, proof) {
        Ok(()) => {}
        // Another connection relays this client on a stronger proof: the request still
        // goes to consensus (the core checks its signature), its replies go the other way.
        Err(RelayRefusal::HeldElsewhere) => return true,
        // Queued before its connection ended (or was closed for forging): nothing could
        // carry its reply, and the client retransmits through its new connection.
        Err(refusal @ RelayRefusal::Closed) => {
            router.metrics().reject(refusal.reason());
            return false;
        }
    }
    // A listed gateway's attestation is its own signed word for the client: the gateway
    // relays its clients on it, once the core took the request ([`submit`]). Attested by
    // anyone else, the request goes to consensus (a forgery there closes this connection)
    // and its replies elsewhere.
    if request.attestation.is_some() {
        return true;
    }
    let digest = request.digest(&node.chain());
    let verified = request
        .client
        .verifying_key()
        .and_then(|key| key.verify(&digest, &request.signature));
    if verified.is_err() {
        router.metrics().reject("bad_request_signature");
        router.forged(&from.key, from.connection);
        return false;
    }
    router.relay(request.client, from.key, from.connection, proof, now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_get_a_bounded_share_of_each_second() {
        let mut budget = QueryBudget::default();
        let key = |i: u32| {
            let mut seed = [3; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            pbft_core::Keypair::from_seed(&seed).public_key()
        };
        let greedy = (0..QUERIES_PER_SECOND)
            .filter(|_| budget.allow(&key(0), 1_500))
            .count();
        assert_eq!(
            greedy, QUERIES_PER_KEY_PER_SECOND as usize,
            "one key's share"
        );
        let allowed = (1..QUERIES_PER_SECOND + 50)
            .filter(|&i| budget.allow(&key(i), 1_500))
            .count();
        assert_eq!(
            allowed,
            (QUERIES_PER_SECOND - QUERIES_PER_KEY_PER_SECOND) as usize,
            "everyone's"
        );
        assert!(budget.allow(&key(0), 2_000), "a new second, a new budget");
    }
}
