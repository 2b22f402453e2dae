//! Where the node's messages go: one bounded queue per validator and per connected client,
//! and the relays through which clients behind a gateway get their replies.
//!
//! Every queue is bounded in frames and in bytes ([`crate::queue`]): a slow or hostile peer
//! fills only its own queue, whose overflow is dropped and counted (consensus and clients
//! retransmit what matters). Client queues also share one byte budget, so many clients that
//! stop reading cannot together hold more than [`CLIENT_QUEUES_BYTES`].
//!
//! A client's replies go to its own connection, or through a connection that proved it may
//! carry them ([`RelayProof`]): the client's signed claim naming that connection's key, or a
//! request of the client's whose signature verified. A request moves a relay only from
//! another request of a lower client seq (so replaying an old signed request cannot take a
//! client's replies from the connection relaying its newer ones); a claim moves any. A relay
//! lasts while its connection does and while it is used ([`RELAY_TTL_MS`]). Each connection
//! relays at most [`MAX_RELAYED_PER_CONNECTION`] clients and the node at most
//! [`MAX_RELAYED_CLIENTS`]; at a bound the newcomer takes the place of one relayed by the
//! connection holding the most, so no connection can keep another from relaying.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pbft_core::PublicKey;

use crate::compression;
use crate::metrics::NodeMetrics;
use crate::node::{Target, Transmit};
use crate::peers::Peers;
use crate::queue::{self, Budget, Frames};
use crate::wire::ServerFrame;

/// Frames waiting for one client connection, at most (a gateway's carries many clients'
/// replies; [`CLIENT_QUEUE_BYTES`] is the bound that matters).
pub const CLIENT_QUEUE: usize = 4096;
/// Bytes waiting for one client connection, at most.
pub const CLIENT_QUEUE_BYTES: usize = 4 << 20;
/// Bytes waiting for all client connections together, at most.
pub const CLIENT_QUEUES_BYTES: usize = 256 << 20;

/// Most clients reachable through other clients' connections at once.
pub const MAX_RELAYED_CLIENTS: usize = 65_536;
/// Most clients one connection relays at once.
pub const MAX_RELAYED_PER_CONNECTION: usize = 16_384;
/// A relay not used (by a relayed request or a renewed claim) for this long may be dropped
/// to make room, in ms.
pub const RELAY_TTL_MS: u64 = 120_000;

/// Where the node's messages go: one bounded queue per validator and per connected client.
#[derive(Debug)]
pub struct Router {
    peers: Arc<Peers>,
    clients: Mutex<Clients>,
    client_bytes: Arc<Budget>,
    /// Messages to validators of at least this many bytes go compressed.
    compress_above: Option<usize>,
    metrics: Arc<NodeMetrics>,
}

/// Forged signatures (requests, relay claims) a client connection may send before the node
/// closes it: an honest client never sends one, and each costs the node a signature check.
pub const MAX_FORGERIES_PER_CONNECTION: u32 = 16;

/// A connected client's queue.
#[derive(Debug)]
struct Attached {
    /// Its connection's number.
    connection: u64,
    queue: queue::Sender,
    /// Forged signatures it sent.
    forgeries: u32,
    /// Clients whose replies go through this connection.
    relayed: HashSet<PublicKey>,
}

/// How a connection proved it may carry a client's replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayProof {
    /// The client's signed claim naming the connection's key
    /// ([`ClientFrame::Relay`](crate::wire::ClientFrame::Relay)).
    Claim,
    /// A request of the client's, at this client seq, whose signature verified.
    Request(u64),
}

impl RelayProof {
    /// Whether a relay proven by `self` may take the client from one proven by `held`.
    fn displaces(self, held: RelayProof) -> bool {
        match (self, held) {
            (RelayProof::Claim, _) => true,
            (RelayProof::Request(seq), RelayProof::Request(held)) => seq > held,
            (RelayProof::Request(_), RelayProof::Claim) => false,
        }
    }
}

/// Why a relay was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RelayRefusal {
    /// The connection ended (the proof was queued before it did).
    Closed,
    /// Another connection relays the client on a proof this one does not displace.
    HeldElsewhere,
}

impl RelayRefusal {
    /// The label the refusal is counted under.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            RelayRefusal::Closed => "relay_connection_closed",
            RelayRefusal::HeldElsewhere => "relay_held_elsewhere",
        }
    }
}

/// Which connection carries a relayed client's replies.
#[derive(Clone, Copy, Debug)]
struct Via {
    through: PublicKey,
    connection: u64,
    proof: RelayProof,
    /// When the relay was last used (a request, a claim, a reply), in the node's ms.
    used_ms: u64,
}

impl Via {
    /// Whether the relay goes through connection `connection` of `through`.
    fn is(&self, through: &PublicKey, connection: u64) -> bool {
        self.through == *through && self.connection == connection
    }
}

/// Connected clients' queues, and the relays.
#[derive(Debug, Default)]
struct Clients {
    next: u64,
    queues: HashMap<PublicKey, Attached>,
    /// Clients whose requests came through another key's connection (a gateway or a load
    /// generator speaking for many clients): their replies go back the same way.
    via: HashMap<PublicKey, Via>,
    /// When expired relays were last swept, in the node's ms.
    swept_ms: u64,
    /// The latest time a caller told, in the node's ms (routing a reply takes no clock).
    now_ms: u64,
}

impl Clients {
    /// Forgets the relays of `attached`, a connection that ended or was replaced.
    fn forget_relays_of(via: &mut HashMap<PublicKey, Via>, attached: &Attached) {
        for client in &attached.relayed {
            via.remove(client);
        }
    }

    /// Whether connection `connection` of `through` is the one attached now.
    fn attached(&mut self, through: &PublicKey, connection: u64) -> Option<&mut Attached> {
        self.queues
            .get_mut(through)
            .filter(|attached| attached.connection == connection)
    }

    /// Ends the relay of `client`.
    fn unrelay(&mut self, client: &PublicKey) {
        if let Some(old) = self.via.remove(client)
            && let Some(attached) = self.attached(&old.through, old.connection)
        {
            attached.relayed.remove(client);
        }
    }

    /// Drops relays unused for [`RELAY_TTL_MS`], at most once a second (a sweep walks the
    /// whole table).
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.swept_ms.saturating_add(1000) {
            return;
        }
        self.swept_ms = now_ms;
        let expired: Vec<PublicKey> = self
            .via
            .iter()
            .filter(|(_, via)| now_ms.saturating_sub(via.used_ms) >= RELAY_TTL_MS)
            .map(|(client, _)| *client)
            .collect();
        for client in expired {
            self.unrelay(&client);
        }
    }

    /// Makes room for one more relay through `through`: within its own bound by ending one
    /// of its own relays, within the node's by ending one of the connection relaying the
    /// most (after expired ones). Counted as `relay_evicted`.
    fn make_room(&mut self, through: &PublicKey, now_ms: u64, metrics: &NodeMetrics) {
        let own = self.queues.get(through).map_or(0, |a| a.relayed.len());
        let victim = if own >= MAX_RELAYED_PER_CONNECTION {
            Some(*through)
        } else if self.via.len() >= MAX_RELAYED_CLIENTS {
            self.sweep(now_ms);
            (self.via.len() >= MAX_RELAYED_CLIENTS)
                .then(|| {
                    self.queues
                        .iter()
                        .max_by_key(|(_, attached)| attached.relayed.len())
                        .map(|(key, _)| *key)
                })
                .flatten()
        } else {
            None
        };
        let evicted = victim.and_then(|key| {
            let attached = self.queues.get(&key)?;
            attached.relayed.iter().next().copied()
        });
        if let Some(client) = evicted {
            self.unrelay(&client);
            metrics.reject("relay_evicted");
        }
    }
}

/// A client's queue, as handed to the transport that writes it to the connection.
#[derive(Debug)]
pub struct ClientQueue {
    /// Identifies this connection among others of the same key.
    pub connection: u64,
    /// The frames to write.
    pub frames: Frames,
}

impl Router {
    /// A router whose messages to validators go to `peers`' links, those of at least
    /// `compress_above` bytes compressed ([`crate::compression`]).
    pub fn new(
        peers: Arc<Peers>,
        compress_above: Option<usize>,
        metrics: Arc<NodeMetrics>,
    ) -> Arc<Router> {
        Arc::new(Router {
            peers,
            clients: Mutex::new(Clients::default()),
            client_bytes: Budget::new(CLIENT_QUEUES_BYTES),
            compress_above,
            metrics,
        })
    }

    /// The validators it sends to.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Clients> {
        // The map stays consistent whatever panicked while holding it: take it anyway.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the queue of a client that just connected (replacing an older connection of
    /// the same key, whose relays end with it); the transport writes what arrives on it to
    /// the client.
    pub fn attach_client(&self, key: PublicKey) -> ClientQueue {
        let (tx, rx) = queue::bounded(
            CLIENT_QUEUE,
            CLIENT_QUEUE_BYTES,
            Some(self.client_bytes.clone()),
        );
        let mut clients = self.clients();
        clients.next += 1;
        let connection = clients.next;
        let attached = Attached {
            connection,
            queue: tx,
            forgeries: 0,
            relayed: HashSet::new(),
        };
        if let Some(old) = clients.queues.insert(key, attached) {
            Clients::forget_relays_of(&mut clients.via, &old);
        }
        self.metrics
            .clients_connected
            .set(clients.queues.len() as i64);
        ClientQueue {
            connection,
            frames: rx,
        }
    }

    /// Closes a client's queue when its connection ends, unless a newer one replaced it,
    /// and ends the relays through it.
    pub fn detach_client(&self, key: &PublicKey, queue: &ClientQueue) {
        let mut clients = self.clients();
        if clients
            .queues
            .get(key)
            .is_some_and(|attached| attached.connection == queue.connection)
            && let Some(old) = clients.queues.remove(key)
        {
            Clients::forget_relays_of(&mut clients.via, &old);
        }
        self.metrics
            .clients_connected
            .set(clients.queues.len() as i64);
    }

    /// The metrics the router counts into.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// Whether connection `connection` of `through` carries `client`'s replies already;
    /// if so the relay counts as used at `now_ms`. Lets a repeated claim or relayed request
    /// skip its signature check.
    pub(crate) fn relays(
        &self,
        client: &PublicKey,
        through: &PublicKey,
        connection: u64,
        now_ms: u64,
    ) -> bool {
        let mut clients = self.clients();
        clients.now_ms = clients.now_ms.max(now_ms);
        match clients.via.get_mut(client) {
            Some(via) if via.is(through, connection) => {
                via.used_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Whether a relay of `client` through connection `connection` of `through`, proven
    /// by `proof`, would be taken: the connection is still attached, and `proof` displaces
    /// whatever relays `client` elsewhere. On `Err` the label says why. Checked before the
    /// proof's signature, so a relay that would be refused costs no signature check.
    pub(crate) fn may_relay(
        &self,
        client: &PublicKey,
        through: &PublicKey,
        connection: u64,
        proof: RelayProof,
    ) -> Result<(), RelayRefusal> {
        let mut clients = self.clients();
        Self::check(&mut clients, client, through, connection, proof)
    }

    fn check(
        clients: &mut Clients,
        client: &PublicKey,
        through: &PublicKey,
        connection: u64,
        proof: RelayProof,
    ) -> Result<(), RelayRefusal> {
        if clients.attached(through, connection).is_none() {
            // The claim was queued before its connection ended: nothing to route through.
            return Err(RelayRefusal::Closed);
        }
        match clients.via.get(client) {
            Some(via) if !via.is(through, connection) && !proof.displaces(via.proof) => {
                Err(RelayRefusal::HeldElsewhere)
            }
            _ => Ok(()),
        }
    }

    /// Routes replies for `client` through connection `connection` of `through`, which
    /// proved it may carry them by `proof` (checked by the caller). Refused (and counted) as
    /// [`Router::may_relay`] says; at a bound another relay makes room.
    pub(crate) fn relay(
        &self,
        client: PublicKey,
        through: PublicKey,
        connection: u64,
        proof: RelayProof,
        now_ms: u64,
    ) -> bool {
        let mut clients = self.clients();
        if let Err(refusal) = Self::check(&mut clients, &client, &through, connection, proof) {
            self.metrics.reject(refusal.reason());
            return false;
        }
        let proof = match clients.via.get(&client) {
            Some(held) if held.is(&through, connection) => match proof.displaces(held.proof) {
                true => proof,
                false => held.proof,
            },
            _ => proof,
        };
        clients.now_ms = clients.now_ms.max(now_ms);
        clients.unrelay(&client);
        clients.make_room(&through, now_ms, &self.metrics);
        let via = Via {
            through,
            connection,
            proof,
            used_ms: now_ms,
        };
        clients.via.insert(client, via);
        if let Some(attached) = clients.attached(&through, connection) {
            attached.relayed.insert(client);
        }
        true
    }

    /// Sends a frame to a client, if it is connected here (directly or through a relay).
    pub fn to_client(&self, key: &PublicKey, frame: &ServerFrame) {
        self.to_client_via(key, frame, None);
    }

    /// [`Router::to_client`], or through `gateway` (the listed gateway that attested the
    /// request a reply answers) when the client has neither a connection nor a relay here.
    fn to_client_via(&self, key: &PublicKey, frame: &ServerFrame, gateway: Option<&PublicKey>) {
        let mut clients = self.clients();
        let clients = &mut *clients;
        let attached = match clients.queues.get(key) {
            Some(attached) => Some(attached),
            None => match clients.via.get_mut(key) {
                Some(via) => {
                    // A relay that carries replies is in use, though the client's requests
                    // reach this node only through another.
                    via.used_ms = clients.now_ms.max(via.used_ms);
                    clients.queues.get(&via.through)
                }
                None => gateway.and_then(|gateway| clients.queues.get(gateway)),
            },
        };
        if let Some(attached) = attached
            && attached.queue.try_send(frame.encode()).is_err()
        {
            self.metrics.reject("client_queue_full");
        }
    }

    /// Counts a forged signature from connection `connection` of `key`; at
    /// [`MAX_FORGERIES_PER_CONNECTION`] its queue closes, which ends the connection (counted
    /// as `forging_connection_closed`).
    pub(crate) fn forged(&self, key: &PublicKey, connection: u64) {
        let mut clients = self.clients();
        if let Some(attached) = clients.attached(key, connection) {
            attached.forgeries += 1;
            if attached.forgeries == MAX_FORGERIES_PER_CONNECTION {
                attached.queue.close();
                self.metrics.reject("forging_connection_closed");
            }
        }
    }

    /// Whether connection `connection` of `key` is being closed for forging signatures.
    pub(crate) fn is_forging(&self, key: &PublicKey, connection: u64) -> bool {
        self.clients()
            .attached(key, connection)
            .is_some_and(|attached| attached.forgeries >= MAX_FORGERIES_PER_CONNECTION)
    }

    /// How many more forged signatures connection `connection` of `key` may send before it
    /// is closed: `None` once it ended (or was replaced), `Some(0)` while it is being closed.
    pub(crate) fn forgeries_left(&self, key: &PublicKey, connection: u64) -> Option<u32> {
        self.clients()
            .attached(key, connection)
            .map(|attached| MAX_FORGERIES_PER_CONNECTION.saturating_sub(attached.forgeries))
    }

    /// Whether a connection of `key`'s is attached now.
    pub fn is_attached(&self, key: &PublicKey) -> bool {
        self.clients().queues.contains_key(key)
    }

    /// Clients whose replies go through another connection, now.
    pub fn relayed_clients(&self) -> usize {
        self.clients().via.len()
    }

    /// Puts a message the node sends on its destination's queue.
    pub(crate) fn route(&self, transmit: Transmit) {
        let to_validators = |bytes| compression::compress(bytes, self.compress_above);
        match transmit.to {
            Target::Validator(key) => self.peers.send(&key, to_validators(transmit.bytes)),
            // Compressed once for every validator.
            Target::AllValidators => self.peers.broadcast(&to_validators(transmit.bytes)),
            Target::Client(key) => {
                let frame = ServerFrame::Message(transmit.bytes);
                self.to_client_via(&key, &frame, transmit.via.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{PEER_QUEUE, PEER_QUEUE_BYTES};
    use pbft_core::Keypair;

    /// A router of validator 0 of `validators`, compressing from `compress_above` bytes,
    /// and the queues of its links to the others, in id order.
    fn router_compressing(
        validators: u8,
        compress_above: Option<usize>,
    ) -> (Arc<Router>, Vec<(PublicKey, Frames)>) {
        let keys: Vec<_> = (0..validators)
            .map(|i| Keypair::from_seed(&[i + 1; 32]).public_key())
            .collect();
        let addresses: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| (*key, std::net::SocketAddr::from(([127, 0, 0, 1], i as u16))))
            .collect();
        let metrics = Arc::new(NodeMetrics::new());
        let (peers, links) =
            Peers::new(keys[0], (keys, vec![]), addresses, 1 << 20, metrics.clone());
        let mut queues: Vec<_> = links.drain().map(|peer| (peer.key, peer.queue)).collect();
        queues.sort_by_key(|(key, _)| peer_position(&peers, key));
        (Router::new(peers, compress_above, metrics), queues)
    }

    fn peer_position(peers: &Peers, key: &PublicKey) -> u16 {
        peers.address(key).expect("configured").port()
    }

    fn router(validators: u8) -> (Arc<Router>, Vec<(PublicKey, Frames)>) {
        router_compressing(validators, None)
    }

    fn key(seed: u32) -> PublicKey {
        let mut bytes = [7; 32];
        bytes[..4].copy_from_slice(&seed.to_le_bytes());
        Keypair::from_seed(&bytes).public_key()
    }

    #[test]
    fn a_full_peer_queue_drops_and_counts() {
        let (router, queues) = router(4);
        assert_eq!(queues.len(), 3);
        for _ in 0..PEER_QUEUE + 10 {
            router.route(Transmit {
                to: Target::Validator(queues[0].0),
                bytes: vec![1],
                via: None,
            });
        }
        assert_eq!(queues[0].1.len(), PEER_QUEUE);
        assert_eq!(queues[1].1.len(), 0, "other peers are not affected");
        assert_eq!(router.metrics().rejected("peer_queue_full"), 10);
    }

    #[test]
    fn a_large_message_goes_to_every_validator_compressed_once_and_expands_to_itself() {
        let (router, queues) = router_compressing(3, Some(4096));
        // A batch-like message: repeated field names around counters.
        let message: Vec<u8> = (0u32..4096)
            .flat_map(|i| [&b"put key value "[..], &i.to_le_bytes()].concat())
            .collect();
        router.route(Transmit {
            to: Target::AllValidators,
            bytes: message.clone(),
            via: None,
        });
        router.route(Transmit {
            to: Target::Validator(queues[0].0),
            bytes: vec![2; 100],
            via: None,
        });
        for (_, queue) in &queues {
            let frame = queue.try_recv().unwrap();
            assert_eq!(frame[0], crate::compression::COMPRESSED);
            assert!(frame.len() < message.len() / 2);
            assert_eq!(crate::compression::expand(frame, 1 << 20).unwrap(), message);
        }
        assert_eq!(
            queues[0].1.try_recv(),
            Some(vec![2; 100]),
            "a small one goes as it is"
        );
    }

    #[test]
    fn a_peer_queue_of_large_frames_is_bounded_in_bytes() {
        let (router, queues) = router(2);
        for _ in 0..100 {
            router.route(Transmit {
                to: Target::Validator(queues[0].0),
                bytes: vec![0; 1 << 20],
                via: None,
            });
        }
        assert_eq!(queues[0].1.bytes(), PEER_QUEUE_BYTES);
        assert_eq!(router.metrics().rejected("peer_queue_full"), 100 - 64);
    }

    #[test]
    fn a_client_that_does_not_read_holds_at_most_its_bytes_and_all_at_most_theirs() {
        let (router, _) = router(1);
        let reply = ServerFrame::Message(vec![0; 64 << 10]);
        let per_client = CLIENT_QUEUE_BYTES / reply.encode().len();
        let queues: Vec<_> = (0..100)
            .map(|i| (key(i), router.attach_client(key(i))))
            .collect();
        for (client, _) in &queues {
            for _ in 0..1000 {
                router.to_client(client, &reply);
            }
        }
        assert_eq!(queues[0].1.frames.len(), per_client, "its own bound");
        let held: usize = queues.iter().map(|(_, queue)| queue.frames.bytes()).sum();
        assert!(held <= CLIENT_QUEUES_BYTES, "{held} bytes");
        assert!(
            held > CLIENT_QUEUES_BYTES - CLIENT_QUEUE_BYTES,
            "{held} bytes"
        );
        // A client that goes away gives its bytes back to the others.
        let (gone, queue) = &queues[0];
        let before = queue.frames.bytes();
        router.detach_client(gone, queue);
        drop(queues);
        assert!(before > 0);
        assert_eq!(router.client_bytes.used(), 0);
    }

    #[test]
    fn a_reconnected_client_keeps_its_new_queue_when_the_old_connection_ends() {
        let (router, _) = router(1);
        let client = key(9);
        let old = router.attach_client(client);
        let new = router.attach_client(client);
        router.detach_client(&client, &old);
        router.to_client(&client, &ServerFrame::Proof(None));
        assert_eq!(
            new.frames.len(),
            1,
            "the newer connection still gets frames"
        );
        assert_eq!(router.metrics().clients_connected.get(), 1);
        router.detach_client(&client, &new);
        assert_eq!(router.metrics().clients_connected.get(), 0);
    }

    const CLAIM: RelayProof = RelayProof::Claim;

    #[test]
    fn relays_end_with_their_connection_and_claims_for_a_closed_one_are_refused() {
        let (router, _) = router(1);
        let gateway = key(1);
        let queue = router.attach_client(gateway);
        for i in 0..100 {
            assert!(router.relay(key(1000 + i), gateway, queue.connection, CLAIM, 0));
        }
        assert!(router.relays(&key(1000), &gateway, queue.connection, 5));
        router.to_client(&key(1000), &ServerFrame::Proof(None));
        assert_eq!(queue.frames.len(), 1, "a relayed client's reply");
        router.detach_client(&gateway, &queue);
        assert_eq!(router.relayed_clients(), 0, "gone with the connection");
        // Claims queued before the connection closed arrive after it: nothing is kept.
        for i in 0..100 {
            assert!(!router.relay(key(2000 + i), gateway, queue.connection, CLAIM, 10));
        }
        assert_eq!(router.relayed_clients(), 0);
        assert_eq!(router.metrics().rejected("relay_connection_closed"), 100);
        // A newer connection of the same key does not inherit the old one's relays.
        let again = router.attach_client(gateway);
        assert!(!router.relays(&key(1000), &gateway, again.connection, 20));
    }

    #[test]
    fn a_connection_that_keeps_forging_signatures_is_closed() {
        let (router, _) = router(1);
        let forger = key(1);
        let queue = router.attach_client(forger);
        for _ in 0..MAX_FORGERIES_PER_CONNECTION - 1 {
            router.forged(&forger, queue.connection);
        }
        assert!(!queue.frames.is_closed());
        router.forged(&forger, queue.connection);
        assert!(
            queue.frames.is_closed(),
            "its writer ends, and the connection with it"
        );
        assert_eq!(router.metrics().rejected("forging_connection_closed"), 1);
    }

    #[test]
    fn an_old_signed_request_cannot_take_a_client_from_the_relay_of_its_newer_ones() {
        let (router, _) = router(1);
        let (client, gateway, thief) = (key(1), key(2), key(3));
        let relayed = router.attach_client(gateway);
        let stolen = router.attach_client(thief);
        assert!(router.relay(
            client,
            gateway,
            relayed.connection,
            RelayProof::Request(10),
            0
        ));
        // Replaying the client's request 9 (or 10 again) moves nothing.
        for seq in [9, 10] {
            let proof = RelayProof::Request(seq);
            assert_eq!(
                router.may_relay(&client, &thief, stolen.connection, proof),
                Err(RelayRefusal::HeldElsewhere)
            );
            assert!(!router.relay(client, thief, stolen.connection, proof, 1));
        }
        router.to_client(&client, &ServerFrame::Proof(None));
        assert_eq!((relayed.frames.len(), stolen.frames.len()), (1, 0));
        // The client's newer request through another connection moves it there; its own
        // claim moves it anywhere, and then only a claim moves it again.
        assert!(router.relay(client, thief, stolen.connection, RelayProof::Request(11), 2));
        assert!(router.relay(client, gateway, relayed.connection, CLAIM, 3));
        let later = RelayProof::Request(1000);
        assert!(!router.relay(client, thief, stolen.connection, later, 4));
        router.to_client(&client, &ServerFrame::Proof(None));
        assert_eq!((relayed.frames.len(), stolen.frames.len()), (2, 0));
    }

    #[test]
    fn a_connection_at_its_bound_or_a_full_table_makes_room_from_the_largest_holder() {
        let (router, _) = router(1);
        let gateway = key(1);
        let queue = router.attach_client(gateway);
        for i in 0..MAX_RELAYED_PER_CONNECTION as u32 + 10 {
            assert!(router.relay(key(10_000 + i), gateway, queue.connection, CLAIM, 0));
        }
        assert_eq!(router.relayed_clients(), MAX_RELAYED_PER_CONNECTION);
        assert_eq!(router.metrics().rejected("relay_evicted"), 10);

        // Connections that fill the node's table cannot keep a newcomer out: it takes the
        // place of one relayed by the connection holding the most.
        let mut connections = vec![(gateway, queue)];
        let mut next = 100_000u32;
        while router.relayed_clients() < MAX_RELAYED_CLIENTS {
            let through = key(next);
            let attached = router.attach_client(through);
            for _ in
                0..MAX_RELAYED_PER_CONNECTION.min(MAX_RELAYED_CLIENTS - router.relayed_clients())
            {
                next += 1;
                assert!(router.relay(key(next), through, attached.connection, CLAIM, 1));
            }
            connections.push((through, attached));
        }
        let newcomer = key(u32::MAX);
        let attached = router.attach_client(newcomer);
        for i in 0..100 {
            assert!(router.relay(key(500_000 + i), newcomer, attached.connection, CLAIM, 2));
        }
        assert_eq!(router.relayed_clients(), MAX_RELAYED_CLIENTS);
        router.to_client(&key(500_000), &ServerFrame::Proof(None));
        assert_eq!(attached.frames.len(), 1);
        // Unused relays expire and free their places.
        router.clients().swept_ms = 0;
        router.clients().sweep(2 + RELAY_TTL_MS);
        assert_eq!(router.relayed_clients(), 0);
        drop(connections);
    }
}
