//! Where the node's messages go: one bounded queue per validator and per connected client,
//! and the relays through which clients behind a gateway get their replies.
//!
//! Every queue is bounded: a slow or hostile peer fills only its own queue, whose overflow
//! is dropped and counted (consensus and clients retransmit what matters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pbft_core::{Destination, PublicKey, ReplicaId, ValidatorSet};

use crate::metrics::NodeMetrics;
use crate::node::Transmit;
use crate::wire::ServerFrame;

/// Frames waiting for one peer's connection, at most.
pub const PEER_QUEUE: usize = 4096;

/// Most clients reachable through other clients' connections at once.
pub const MAX_RELAYED_CLIENTS: usize = 65_536;

/// The frames for one validator, for the transport's link to it.
pub type PeerQueue = (ReplicaId, async_channel::Receiver<Vec<u8>>);

/// Where the node's messages go: one bounded queue per validator and per connected client.
#[derive(Debug)]
pub struct Router {
    me: ReplicaId,
    validators: Vec<Option<async_channel::Sender<Vec<u8>>>>,
    clients: Mutex<Clients>,
    metrics: Arc<NodeMetrics>,
}

/// Connected clients' queues, each tagged with its connection's number.
#[derive(Debug, Default)]
struct Clients {
    next: u64,
    queues: HashMap<PublicKey, (u64, async_channel::Sender<Vec<u8>>)>,
    /// Clients whose requests came through another key's connection (a gateway or a load
    /// generator speaking for many clients): their replies go back the same way.
    via: HashMap<PublicKey, PublicKey>,
}

/// A client's queue, as handed to the transport that writes it to the connection.
#[derive(Debug)]
pub struct ClientQueue {
    /// Identifies this connection among others of the same key.
    pub connection: u64,
    /// The frames to write.
    pub frames: async_channel::Receiver<Vec<u8>>,
}

impl Router {
    /// A router for validator `me`, and the receiving end of each other validator's queue,
    /// for the transport's sender tasks.
    pub fn new(
        validators: &ValidatorSet,
        me: ReplicaId,
        metrics: Arc<NodeMetrics>,
    ) -> (Arc<Router>, Vec<PeerQueue>) {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for index in 0..validators.len() {
            let id = ReplicaId(index as u16);
            if id == me {
                senders.push(None);
            } else {
                let (tx, rx) = async_channel::bounded(PEER_QUEUE);
                senders.push(Some(tx));
                receivers.push((id, rx));
            }
        }
        let router = Router {
            me,
            validators: senders,
            clients: Mutex::new(Clients::default()),
            metrics,
        };
        (Arc::new(router), receivers)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Clients> {
        // The map stays consistent whatever panicked while holding it: take it anyway.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the queue of a client that just connected (replacing an older connection of
    /// the same key); the transport writes what arrives on it to the client.
    pub fn attach_client(&self, key: PublicKey) -> ClientQueue {
        let (tx, rx) = async_channel::bounded(PEER_QUEUE);
        let mut clients = self.clients();
        clients.next += 1;
        let connection = clients.next;
        clients.queues.insert(key, (connection, tx));
        self.metrics
            .clients_connected
            .set(clients.queues.len() as i64);
        ClientQueue {
            connection,
            frames: rx,
        }
    }

    /// Closes a client's queue when its connection ends, unless a newer one replaced it.
    pub fn detach_client(&self, key: &PublicKey, queue: &ClientQueue) {
        let mut clients = self.clients();
        if clients
            .queues
            .get(key)
            .is_some_and(|(connection, _)| *connection == queue.connection)
        {
            clients.queues.remove(key);
            clients.via.retain(|_, through| through != key);
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

    /// Routes replies for `client` through the connection of `through`, which relayed its
    /// signed request (or proved it may speak for it).
    pub(crate) fn relay(&self, client: PublicKey, through: PublicKey) {
        let mut clients = self.clients();
        if clients.via.len() < MAX_RELAYED_CLIENTS || clients.via.contains_key(&client) {
            clients.via.insert(client, through);
        } else {
            self.metrics.reject("too_many_relayed_clients");
        }
    }

    /// Sends a frame to a client, if it is connected here (directly or through a relay).
    pub fn to_client(&self, key: &PublicKey, frame: &ServerFrame) {
        let clients = self.clients();
        let key = match clients.queues.contains_key(key) {
            true => key,
            false => clients.via.get(key).unwrap_or(key),
        };
        if let Some((_, queue)) = clients.queues.get(key)
            && queue.try_send(frame.encode()).is_err()
        {
            self.metrics.reject("client_queue_full");
        }
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
        Router::new(&set, ReplicaId(0), Arc::new(NodeMetrics::new()))
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
    fn a_reconnected_client_keeps_its_new_queue_when_the_old_connection_ends() {
        let (router, _) = router(1);
        let client = Keypair::from_seed(&[9; 32]).public_key();
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
}
