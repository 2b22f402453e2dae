//! What a node does with a client's [`ClientFrame`]: requests go to the core, relay claims
//! are checked and recorded, and status and proof queries are answered within a budget.

use pbft_core::{Message, PublicKey};

use super::router::Router;
use crate::application::Application;
use crate::node::Node;
use crate::wire::{ClientFrame, ServerFrame, relay_digest};

/// Status and proof queries answered per second, from all clients together: each costs
/// the node's thread up to a batch of hashes, so they get a bounded share of it.
pub const QUERIES_PER_SECOND: u32 = 100;

/// Counts the queries of the current second.
#[derive(Debug, Default)]
pub(super) struct QueryBudget {
    second: u64,
    used: u32,
}

impl QueryBudget {
    /// Whether one more query fits in the second of `now_ms`.
    fn allow(&mut self, now_ms: u64) -> bool {
        if now_ms / 1000 != self.second {
            self.second = now_ms / 1000;
            self.used = 0;
        }
        self.used += 1;
        self.used <= QUERIES_PER_SECOND
    }
}

/// Feeds one frame from the client the transport authenticated as `from` to the node, and
/// answers it where it asks for an answer. Bad frames are counted, never fatal.
pub(super) fn handle<A: Application>(
    node: &mut Node<A>,
    router: &Router,
    queries: &mut QueryBudget,
    from: PublicKey,
    bytes: &[u8],
    now: u64,
) {
    let metrics = router.metrics();
    let max_message = node.max_message_bytes();
    match ClientFrame::decode(bytes) {
        Ok(ClientFrame::Message(bytes)) => match Message::decode(&bytes, max_message) {
            Ok(Message::Request(request)) => {
                let client = request.client;
                if node.submit(now, request).is_ok() && client != from {
                    router.relay(client, from);
                }
            }
            Ok(_) => metrics.reject("client_sent_consensus_message"),
            Err(_) => metrics.reject("decode"),
        },
        Ok(ClientFrame::Relay { client, signature }) => {
            let digest = relay_digest(&node.chain(), &from);
            match client
                .verifying_key()
                .and_then(|key| key.verify(&digest, &signature))
            {
                Ok(()) => router.relay(client, from),
                Err(_) => metrics.reject("bad_relay_signature"),
            }
        }
        Ok(ClientFrame::Status | ClientFrame::Proof { .. }) if !queries.allow(now) => {
            metrics.reject("queries_rate_limited");
        }
        Ok(ClientFrame::Status) => {
            router.to_client(&from, &ServerFrame::Status(node.status(now)));
        }
        Ok(ClientFrame::Proof { seq, request }) => {
            let proof = node.proof(seq, &request).map(Box::new);
            router.to_client(&from, &ServerFrame::Proof(proof));
        }
        Err(_) => metrics.reject("bad_client_frame"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_get_a_bounded_share_of_each_second() {
        let mut budget = QueryBudget::default();
        let allowed = (0..QUERIES_PER_SECOND + 50)
            .filter(|_| budget.allow(1_500))
            .count();
        assert_eq!(allowed, QUERIES_PER_SECOND as usize);
        assert!(budget.allow(2_000), "a new second, a new budget");
    }
}
