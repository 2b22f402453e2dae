//! Where the node's messages go: one bounded queue per validator and per connected client,
//! and the relays through which clients behind a gateway get their replies.
//!
//! Every queue is bounded in frames and in bytes ([`crate::queue`]): a slow or hostile peer
//! fills only its own queue, whose overflow is dropped and counted (consensus and clients
//! retransmit what matters). Client queues also share one byte budget, so many clients that
//! stop reading cannot together hold more than [`CLIENT_QUEUES_BYTES`].
//!
//! A client's replies go to its own connection, or through a connection that proved it may
//! carry them: one that relayed a request whose signature verified, or presented the
//! client's signed relay claim. A relay lasts while its connection does and while it is
//! used ([`RELAY_TTL_MS`]); each connection carries at most [`MAX_RELAYED_PER_CONNECTION`]
//! clients, and the node at most [`MAX_RELAYED_CLIENTS`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pbft_core::{Destination, PublicKey, ReplicaId, ValidatorSet};

use crate::metrics::NodeMetrics;
use crate::node::Transmit;
use crate::queue::{self, Budget, Frames};
use crate::wire::ServerFrame;

/// Frames waiting for one peer's connection, at most.
pub const PEER_QUEUE: usize = 4096;
/// Bytes waiting for one peer's connection, at most (or four of the largest frames, if more).
pub const PEER_QUEUE_BYTES: usize = 64 << 20;

/// Frames waiting for one client connection, at most.
pub const CLIENT_QUEUE: usize = 1024;
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

/// The frames for one validator, for the transport's link to it.
pub type PeerQueue = (ReplicaId, Frames);

/// Where the node's messages go: one bounded queue per validator and per connected client.
#[derive(Debug)]
pub struct Router {
    me: ReplicaId,
    validators: Vec<Option<queue::Sender>>,
    clients: Mutex<Clients>,
    client_bytes: Arc<Budget>,
    metrics: Arc<NodeMetrics>,
}

/// A connected client's queue.
#[derive(Debug)]
struct Attached {
    /// Its connection's number.
    connection: u64,
    queue: queue::Sender,
    /// Clients whose replies go through this connection.
    relayed: usize,
}

/// Which connection carries a relayed client's replies.
#[derive(Clone, Copy, Debug)]
struct Via {
    through: PublicKey,
    connection: u64,
    /// When the relay was last used, in the node's ms.
    used_ms: u64,
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
}

impl Clients {
    /// Forgets the relays of connection `connection` of `through`.
    fn forget_relays_of(&mut self, through: &PublicKey, connection: u64) {
        self.via
            .retain(|_, via| !(via.through == *through && via.connection == connection));
    }

    /// Drops relays unused for [`RELAY_TTL_MS`], at most once a second (a sweep walks the
    /// whole table).
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.swept_ms.saturating_add(1000) {
            return;
        }
        self.swept_ms = now_ms;
        let queues = &mut self.queues;
        self.via.retain(|_, via| {
            let live = now_ms.saturating_sub(via.used_ms) < RELAY_TTL_MS;
            if !live
                && let Some(attached) = queues.get_mut(&via.through)
                && attached.connection == via.connection
            {
                attached.relayed -= 1;
            }
            live
        });
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
    /// A router for validator `me` whose largest frame is `max_frame` bytes, and the
    /// receiving end of each other validator's queue, for the transport's sender tasks.
    pub fn new(
        validators: &ValidatorSet,
        me: ReplicaId,
        max_frame: usize,
        metrics: Arc<NodeMetrics>,
    ) -> (Arc<Router>, Vec<PeerQueue>) {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        let peer_bytes = PEER_QUEUE_BYTES.max(max_frame.saturating_mul(4));
        for index in 0..validators.len() {
            let id = ReplicaId(index as u16);
            if id == me {
                senders.push(None);
            } else {
                let (tx, rx) = queue::bounded(PEER_QUEUE, peer_bytes, None);
                senders.push(Some(tx));
                receivers.push((id, rx));
            }
        }
        let router = Router {
            me,
            validators: senders,
            clients: Mutex::new(Clients::default()),
            client_bytes: Budget::new(CLIENT_QUEUES_BYTES),
            metrics,
        };
        (Arc::new(router), receivers)
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
            relayed: 0,
        };
        if let Some(old) = clients.queues.insert(key, attached) {
            clients.forget_relays_of(&key, old.connection);
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
        {
            clients.queues.remove(key);
            clients.forget_relays_of(key, queue.connection);
        }
        self.metrics
            .clients_connected
            .set(clients.queues.len() as i64);
    }

    /// The metrics the router counts into.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    fn to_validator(&self, id: ReplicaId, bytes: Vec<u8>) {
        if id == self.me {
            return;
        }
        if let Some(Some(queue)) = self.validators.get(id.0 as usize)
            && queue.try_send(bytes).is_err()
        {
            self.metrics.reject("peer_queue_full");
        }
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
        match clients.via.get_mut(client) {
            Some(via) if via.through == *through && via.connection == connection => {
                via.used_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Whether connection `connection` of `through` may take one more relayed client: it
    /// is still attached and neither it nor the node relays the most it may (after
    /// dropping expired relays). On `Err` the label says why. Checked before a claim's
    /// signature, so a connection past its bound costs no signature check.
    pub(crate) fn room_to_relay(
        &self,
        through: &PublicKey,
        connection: u64,
        now_ms: u64,
    ) -> Result<(), &'static str> {
        let mut clients = self.clients();
        Self::room(&mut clients, through, connection, now_ms)
    }

    fn room(
        clients: &mut Clients,
        through: &PublicKey,
        connection: u64,
        now_ms: u64,
    ) -> Result<(), &'static str> {
        match clients.queues.get(through) {
            Some(attached) if attached.connection == connection => {
                if attached.relayed >= MAX_RELAYED_PER_CONNECTION {
                    return Err("too_many_relayed_per_connection");
                }
            }
            // The claim was queued before its connection ended: nothing to route through.
            _ => return Err("relay_connection_closed"),
        }
        if clients.via.len() >= MAX_RELAYED_CLIENTS {
            clients.sweep(now_ms);
            if clients.via.len() >= MAX_RELAYED_CLIENTS {
                return Err("too_many_relayed_clients");
            }
        }
        Ok(())
    }

    /// Routes replies for `client` through connection `connection` of `through`, which
    /// proved it may carry them (it relayed `client`'s signed request, or its signed claim).
    /// Refused (and counted) if the connection is gone or there is no room.
    pub(crate) fn relay(
        &self,
        client: PublicKey,
        through: PublicKey,
        connection: u64,
        now_ms: u64,
    ) -> bool {
        let mut clients = self.clients();
        if let Err(reason) = Self::room(&mut clients, &through, connection, now_ms) {
            self.metrics.reject(reason);
            return false;
        }
        let via = Via {
            through,
            connection,
            used_ms: now_ms,
        };
        if let Some(old) = clients.via.insert(client, via)
            && let Some(attached) = clients.queues.get_mut(&old.through)
            && attached.connection == old.connection
        {
            attached.relayed -= 1;
        }
        if let Some(attached) = clients.queues.get_mut(&through) {
            attached.relayed += 1;
        }
        true
    }

    /// Sends a frame to a client, if it is connected here (directly or through a relay).
    pub fn to_client(&self, key: &PublicKey, frame: &ServerFrame) {
        let clients = self.clients();
        let attached = match clients.queues.get(key) {
            Some(attached) => Some(attached),
            None => clients
                .via
                .get(key)
                .and_then(|via| clients.queues.get(&via.through)),
        };
        if let Some(attached) = attached
            && attached.queue.try_send(frame.encode()).is_err()
        {
            self.metrics.reject("client_queue_full");
        }
    }

    /// Clients whose replies go through another connection, now.
    pub fn relayed_clients(&self) -> usize {
        self.clients().via.len()
    }

    /// Puts a message the node sends on its destination's queue.
    pub(crate) fn route(&self, transmit: Transmit) {
        match transmit.to {
            Destination::Validator(id) => self.to_validator(id, transmit.bytes),
            Destination::AllValidators => {
                for index in 0..self.validators.len() {
                    self.to_validator(ReplicaId(index as u16), transmit.bytes.clone());
                }
            }
            Destination::Client(key) => {
                self.to_client(&key, &ServerFrame::Message(transmit.bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::Keypair;

    fn router(validators: u8) -> (Arc<Router>, Vec<PeerQueue>) {
        let keys: Vec<_> = (0..validators)
            .map(|i| Keypair::from_seed(&[i + 1; 32]).public_key())
            .collect();
        let set = ValidatorSet::new(0, &keys).unwrap();
        Router::new(&set, ReplicaId(0), 1 << 20, Arc::new(NodeMetrics::new()))
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
                to: Destination::Validator(ReplicaId(1)),
                bytes: vec![1],
            });
        }
        assert_eq!(queues[0].1.len(), PEER_QUEUE);
        assert_eq!(queues[1].1.len(), 0, "other peers are not affected");
        assert_eq!(router.metrics().rejected("peer_queue_full"), 10);
    }

    #[test]
    fn a_peer_queue_of_large_frames_is_bounded_in_bytes() {
        let (router, queues) = router(2);
        for _ in 0..100 {
            router.route(Transmit {
                to: Destination::Validator(ReplicaId(1)),
                bytes: vec![0; 1 << 20],
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

    #[test]
    fn relays_end_with_their_connection_and_claims_for_a_closed_one_are_refused() {
        let (router, _) = router(1);
        let gateway = key(1);
        let queue = router.attach_client(gateway);
        for i in 0..100 {
            assert!(router.relay(key(1000 + i), gateway, queue.connection, 0));
        }
        assert!(router.relays(&key(1000), &gateway, queue.connection, 5));
        router.to_client(&key(1000), &ServerFrame::Proof(None));
        assert_eq!(queue.frames.len(), 1, "a relayed client's reply");
        router.detach_client(&gateway, &queue);
        assert_eq!(router.relayed_clients(), 0, "gone with the connection");
        // Claims queued before the connection closed arrive after it: nothing is kept.
        for i in 0..100 {
            assert!(!router.relay(key(2000 + i), gateway, queue.connection, 10));
        }
        assert_eq!(router.relayed_clients(), 0);
        assert_eq!(router.metrics().rejected("relay_connection_closed"), 100);
        // A newer connection of the same key does not inherit the old one's relays.
        let again = router.attach_client(gateway);
        assert!(!router.relays(&key(1000), &gateway, again.connection, 20));
    }

    #[test]
    fn one_connection_relays_a_bounded_number_and_unused_relays_expire() {
        let (router, _) = router(1);
        let gateway = key(1);
        let queue = router.attach_client(gateway);
        for i in 0..MAX_RELAYED_PER_CONNECTION as u32 {
            assert!(router.relay(key(10_000 + i), gateway, queue.connection, 0));
        }
        assert_eq!(
            router.room_to_relay(&gateway, queue.connection, 0),
            Err("too_many_relayed_per_connection")
        );
        // Moving a client to another relay frees its place on the first.
        let other = key(2);
        let other_queue = router.attach_client(other);
        assert!(router.relay(key(10_000), other, other_queue.connection, 0));
        assert_eq!(router.room_to_relay(&gateway, queue.connection, 0), Ok(()));

        // Fill the node's table from several connections; expired relays make room.
        let mut connections = vec![(gateway, queue), (other, other_queue)];
        let mut next = 100_000u32;
        while router.relayed_clients() < MAX_RELAYED_CLIENTS {
            let through = key(next);
            let attached = router.attach_client(through);
            for _ in 0..MAX_RELAYED_PER_CONNECTION {
                next += 1;
                if !router.relay(key(next), through, attached.connection, 1) {
                    break;
                }
            }
            connections.push((through, attached));
        }
        let late = key(u32::MAX);
        let late_queue = router.attach_client(late);
        assert_eq!(
            router.room_to_relay(&late, late_queue.connection, 2),
            Err("too_many_relayed_clients")
        );
        assert_eq!(
            router.room_to_relay(&late, late_queue.connection, 2 + RELAY_TTL_MS),
            Ok(()),
            "every relay expired"
        );
        assert_eq!(router.relayed_clients(), 0);
        drop(connections);
    }
}
