//! The validators a node exchanges consensus messages with, as the set changes by epoch:
//! which keys the transport admits as validators, where each listens, and the queue of the
//! link to each.
//!
//! The members are the validators of the node's epoch and those a committed change adds at
//! the next boundary (they must be reachable to fetch the state they start from). The node's
//! thread sets them after every round that changed them ([`Peers::set_members`]); a key that
//! leaves loses its queue, which ends the transport's link to it, and is refused at the next
//! handshake ([`crate::driver::admission::Members`]). A key that joins gets a queue and a
//! link as soon as its address is known: from the config (genesis validators and the
//! `[[peers]]` table), or learned from the member's own authenticated connection
//! ([`Peers::learn`]: the address it listens on, which QUIC's shared endpoint dials from and
//! TCP's handshake states), so a validator added by governance is reached without anyone
//! editing a config.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use pbft_core::PublicKey;

use crate::driver::admission::Members;
use crate::metrics::NodeMetrics;
use crate::queue::{self, Frames};

/// Frames waiting for one peer's connection, at most.
pub const PEER_QUEUE: usize = 4096;
/// Bytes waiting for one peer's connection, at most (or four of the largest frames, if more).
pub const PEER_QUEUE_BYTES: usize = 64 << 20;

/// A validator the transport is to keep a link to.
#[derive(Debug)]
pub struct Peer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The key it must prove.
    pub key: PublicKey,
    /// The frames for it; the link ends when this closes (the key left the set, or its
    /// address changed and a new link replaces this one).
    pub queue: Frames,
}

/// The links a transport is to open, as [`Peers::new`] hands them over.
pub type Links = flume::Receiver<Peer>;

/// The node's peers: see the module doc.
#[derive(Debug)]
pub struct Peers {
    me: PublicKey,
    peer_bytes: usize,
    state: RwLock<State>,
    links: flume::Sender<Peer>,
    metrics: Arc<NodeMetrics>,
}

#[derive(Debug, Default)]
struct State {
    /// The validators of the node's epoch, without its own key: whom a broadcast reaches.
    set: Vec<PublicKey>,
    /// Keys admitted as validators (the set and the validators a scheduled change adds),
    /// without the node's own.
    members: HashSet<PublicKey>,
    /// Where keys listen: configured, or learned from their connections.
    addresses: HashMap<PublicKey, SocketAddr>,
    /// The queue of the link to each member with a known address.
    queues: HashMap<PublicKey, queue::Sender>,
}

impl Peers {
    /// The peers of the holder of `me`, whose epoch's set is `set` (see
    /// [`Peers::set_members`] for `newcomers`), and who knows
    /// `addresses` (from its config), with links whose queues hold `max_frame`-byte frames;
    /// and the receiving end of the links to open, for the transport (one [`Peer`] per
    /// member with an address now, one more each time a member's address becomes known).
    pub fn new(
        me: PublicKey,
        (set, newcomers): (Vec<PublicKey>, Vec<PublicKey>),
        addresses: impl IntoIterator<Item = (PublicKey, SocketAddr)>,
        max_frame: usize,
        metrics: Arc<NodeMetrics>,
    ) -> (Arc<Peers>, Links) {
        let (links, opened) = flume::unbounded();
        let addresses: HashMap<_, _> = addresses.into_iter().collect();
        let peers = Peers {
            me,
            peer_bytes: PEER_QUEUE_BYTES.max(max_frame.saturating_mul(4)),
            state: RwLock::new(State {
                addresses,
                ..State::default()
            }),
            links,
            metrics,
        };
        peers.set_members(set, newcomers);
        (Arc::new(peers), opened)
    }

    fn state(&self) -> RwLockWriteGuard<'_, State> {
        // The maps stay consistent whatever panicked while holding them: take them anyway.
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every inbound validator frame asks whether its key is a member: readers share.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `set` (the validators of the node's epoch) and `newcomers` (those a scheduled
    /// change adds) the keys admitted as validators: links to keys that left end (their
    /// queues close), links to keys that joined open if their address is known.
    pub fn set_members(&self, set: Vec<PublicKey>, newcomers: Vec<PublicKey>) {
        let mut state = self.state();
        let set: Vec<PublicKey> = set.into_iter().filter(|k| *k != self.me).collect();
        let members: HashSet<PublicKey> = set
            .iter()
            .chain(&newcomers)
            .filter(|k| **k != self.me)
            .copied()
            .collect();
        state.queues.retain(|key, queue| {
            let stays = members.contains(key);
            if !stays {
                queue.close();
            }
            stays
        });
        for key in &members {
            if !state.queues.contains_key(key)
                && let Some(addr) = state.addresses.get(key).copied()
            {
                self.open(&mut state, *key, addr);
            }
        }
        state.members = members;
        state.set = set;
    }

    /// As [`Peers::set_members`], but what `send` routes first still reaches the keys that
    /// leave, and broadcasts reach the old and the new set: the round that ends an epoch
    /// carries the boundary's checkpoint to the validators it removes (so they learn of
    /// their removal and retire) and the new epoch's first messages to those it adds. A
    /// leaving key's queue is closed after `send`: its link writes what is queued, then
    /// ends.
    pub fn set_members_around(
        &self,
        set: Vec<PublicKey>,
        newcomers: Vec<PublicKey>,
        send: impl FnOnce(),
    ) {
        let (old_set, old_members) = {
            let state = self.read();
            (state.set.clone(), state.members.clone())
        };
        let mut union_set = old_set;
        for key in &set {
            if !union_set.contains(key) {
                union_set.push(*key);
            }
        }
        let union_members = old_members
            .into_iter()
            .chain(newcomers.iter().copied())
            .collect();
        self.set_members(union_set, union_members);
        send();
        self.set_members(set, newcomers);
    }

    /// Opens the queue of a link to `key` at `addr`, replacing (closing) any older one, and
    /// hands the link to the transport.
    fn open(&self, state: &mut State, key: PublicKey, addr: SocketAddr) {
        let (tx, rx) = queue::bounded(PEER_QUEUE, self.peer_bytes, None);
        if let Some(old) = state.queues.insert(key, tx) {
            old.close();
        }
        // The transport holds the receiver as long as it runs.
        let _ = self.links.send(Peer {
            addr,
            key,
            queue: rx,
        });
    }

    /// A member's authenticated connection says it listens at `addr`: a member whose address
    /// is not known yet is linked to there. The first address learned for a key stays for
    /// the life of the process (a validator that moves is reached again once its peers
    /// restart, or through `[[peers]]`): a validator that kept reconnecting from new
    /// addresses would otherwise leave a link and a full queue behind at each.
    pub fn learn(&self, key: &PublicKey, addr: SocketAddr) {
        if !self.read().members.contains(key) {
            return;
        }
        let mut state = self.state();
        if state.addresses.contains_key(key) {
            return;
        }
        tracing::info!(%key, %addr, "learned a validator's address");
        state.addresses.insert(*key, addr);
        self.open(&mut state, *key, addr);
    }

    /// Puts `bytes` on `key`'s link; dropped and counted if the key is no member, its
    /// address is unknown, or its queue is full.
    pub fn send(&self, key: &PublicKey, bytes: Vec<u8>) {
        if *key == self.me {
            return;
        }
        let queue = self.read().queues.get(key).cloned();
        match queue {
            Some(queue) => {
                if queue.try_send(bytes).is_err() {
                    self.metrics.reject("peer_queue_full");
                }
            }
            None => self.metrics.reject("peer_unreachable"),
        }
    }

    /// Puts `bytes` on the link of every other validator of the node's epoch.
    pub fn broadcast(&self, bytes: &[u8]) {
        // The copies are made outside the lock, which inbound frames wait for.
        let queues: Vec<Option<queue::Sender>> = {
            let state = self.read();
            state
                .set
                .iter()
                .map(|key| state.queues.get(key).cloned())
                .collect()
        };
        for queue in queues {
            match queue {
                Some(queue) => {
                    if queue.try_send(bytes.to_vec()).is_err() {
                        self.metrics.reject("peer_queue_full");
                    }
                }
                None => self.metrics.reject("peer_unreachable"),
            }
        }
    }

    /// The address a member is linked to, if known.
    pub fn address(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.read().addresses.get(key).copied()
    }
}

impl Members for Peers {
    fn is_member(&self, key: &PublicKey) -> bool {
        self.read().members.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::Keypair;

    fn key(seed: u8) -> PublicKey {
        Keypair::from_seed(&[seed; 32]).public_key()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn links_follow_the_members_and_learned_addresses() {
        let metrics = Arc::new(NodeMetrics::new());
        let configured = [(key(1), addr(1)), (key(2), addr(2))];
        let set = (vec![key(0), key(1)], vec![]);
        let (peers, links) = Peers::new(key(0), set, configured, 64, metrics);
        let opened: Vec<_> = links.drain().collect();
        assert_eq!(opened.len(), 1, "a link to the one other member");
        assert_eq!((opened[0].key, opened[0].addr), (key(1), addr(1)));
        assert!(peers.is_member(&key(1)) && !peers.is_member(&key(2)));
        assert!(!peers.is_member(&key(0)), "the node's own key is no peer");

        // A non-member's address is not learned; a member's is, once.
        peers.learn(&key(3), addr(3));
        assert!(links.is_empty());
        peers.set_members(vec![key(0), key(1), key(2)], vec![key(3)]);
        let opened: Vec<_> = links.drain().map(|p| p.key).collect();
        assert_eq!(opened, [key(2)], "key 3's address is not known yet");
        peers.learn(&key(3), addr(3));
        peers.learn(&key(3), addr(3));
        assert_eq!(links.drain().count(), 1);
        // Reconnecting from elsewhere moves nothing: no second link, no stranded queue.
        peers.learn(&key(3), addr(8));
        assert!(links.is_empty());
        assert_eq!(peers.address(&key(3)), Some(addr(3)));
        // A configured address is not replaced by what a connection says.
        peers.learn(&key(1), addr(9));
        assert!(links.is_empty());
        assert_eq!(peers.address(&key(1)), Some(addr(1)));

        // A key that leaves loses its link and its admission.
        let first = opened_queue(&peers, &key(2));
        peers.set_members(vec![key(1), key(3)], vec![]);
        assert_eq!(first.try_send(vec![1]), Err(queue::Full::Closed));
        assert!(!peers.is_member(&key(2)));
        peers.send(&key(2), vec![1]);
        assert_eq!(peers.metrics.rejected("peer_unreachable"), 1);
    }

    #[test]
    fn the_round_that_changes_the_set_reaches_the_old_and_the_new_members() {
        let metrics = Arc::new(NodeMetrics::new());
        let configured = [(key(1), addr(1)), (key(2), addr(2)), (key(3), addr(3))];
        let set = (vec![key(0), key(1), key(2)], vec![]);
        let (peers, links) = Peers::new(key(0), set, configured, 64, metrics);
        let mut queues: Vec<_> = links.drain().map(|peer| (peer.key, peer.queue)).collect();
        // Key 2 leaves and key 3 joins: the round's broadcast reaches both.
        peers.set_members_around(vec![key(0), key(1), key(3)], vec![], || {
            peers.broadcast(b"boundary");
        });
        queues.extend(links.drain().map(|peer| (peer.key, peer.queue)));
        for (key, queue) in &queues {
            assert_eq!(queue.try_recv(), Some(b"boundary".to_vec()), "{key}");
        }
        assert!(!peers.is_member(&key(2)) && peers.is_member(&key(3)));
        // The leaver's link ends once it wrote what was queued.
        let leaver = &queues.iter().find(|(k, _)| *k == key(2)).unwrap().1;
        assert!(leaver.is_closed() && leaver.is_empty());
        peers.broadcast(b"next");
        assert_eq!(leaver.try_recv(), None);
    }

    /// A fresh receiver is not at hand here: closing is seen through the sender.
    fn opened_queue(peers: &Peers, key: &PublicKey) -> queue::Sender {
        peers.read().queues.get(key).expect("a queue").clone()
    }
}
