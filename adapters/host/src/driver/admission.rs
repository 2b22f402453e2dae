//! Who may hold a connection to a node, and how many: a bounded pool of handshakes in
//! progress (overall and per source address), then, once a key is proven, a place among the
//! few reserved for each validator key or among the bounded client places.
//!
//! A connection takes a [`Handshake`] when it arrives, before anything is proven; the
//! handshake turns into a [`Slot`] when the key it proved is admitted for the role it asked
//! ([`Handshake::admit`]), and frees its handshake place either way. Validators never compete
//! with clients: however many clients connect, a validator whose link dropped gets back in.
//!
//! A refusal is a [`Refusal`]: its [`Refusal::reason`] labels the metrics, its `Display` is
//! for logs, and a transport that can tell the other side why (QUIC's close codes) maps it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pbft_core::{PublicKey, ValidatorSet};

/// Most clients connected to one node at once, by default; a transport refuses more.
pub const MAX_CLIENTS: usize = 4096;

/// Most handshakes in progress at once, by default. Each costs a task and a buffer (TCP: a
/// descriptor too) before anything is proven, so they are bounded apart from the places of
/// proven keys.
pub const MAX_HANDSHAKES: usize = 256;

/// Most handshakes in progress at once from one source address (an IPv6 /64), by default:
/// one host cannot take the whole handshake pool.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;

/// Connections each validator key may hold at once, by default: one link, and room for
/// reconnects while the other side has not yet noticed that the old connection died.
pub const CONNECTIONS_PER_VALIDATOR: usize = 4;

/// Most connections a node holds at once, by default, besides the places reserved for its
/// validators' keys: every client it admits and the handshakes in progress.
pub const MAX_CONNECTIONS: usize = MAX_CLIENTS + MAX_HANDSHAKES;

/// Descriptors a node keeps for other things than accepted connections when it derives its
/// limits from its descriptor limit ([`ConnectionLimits::within_descriptors`]): its log and
/// store files, the metrics endpoint, standard streams, the runtime's own (epoll, eventfd,
/// timers), with a margin. Its links to its peers are counted apart.
pub const RESERVED_DESCRIPTORS: usize = 64;

/// How many connections a node holds at once, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Handshakes in progress (default [`MAX_HANDSHAKES`]).
    pub handshakes: usize,
    /// Handshakes in progress from one source address (default
    /// [`MAX_HANDSHAKES_PER_ADDRESS`]).
    pub handshakes_per_address: usize,
    /// Established connections per validator key (default [`CONNECTIONS_PER_VALIDATOR`]).
    pub per_validator: usize,
    /// Established client (and gateway) connections (default [`MAX_CLIENTS`]).
    pub clients: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            handshakes: MAX_HANDSHAKES,
            handshakes_per_address: MAX_HANDSHAKES_PER_ADDRESS,
            per_validator: CONNECTIONS_PER_VALIDATOR,
            clients: MAX_CLIENTS,
        }
    }
}

impl ConnectionLimits {
    /// These limits, lowered where needed so that a node with `validators` validators whose
    /// every connection costs a descriptor never needs more than `descriptors` of them (its
    /// soft `RLIMIT_NOFILE`): [`RESERVED_DESCRIPTORS`] and one per outgoing peer link are
    /// kept aside; the validators' places come first, then a quarter of what is left at most
    /// goes to handshakes, the rest to clients. With too few descriptors for the validators'
    /// places alone, no client is admitted and few handshakes run (check
    /// [`ConnectionLimits::descriptors`] against the limit to warn).
    pub fn within_descriptors(self, descriptors: u64, validators: usize) -> ConnectionLimits {
        let descriptors = usize::try_from(descriptors).unwrap_or(usize::MAX);
        let free = descriptors
            .saturating_sub(RESERVED_DESCRIPTORS)
            .saturating_sub(validators.saturating_sub(1));
        let per_validator = self.per_validator;
        let after_validators = free.saturating_sub(per_validator * validators);
        // At least one handshake can always run, or no one (a validator neither) gets in.
        let handshakes = self.handshakes.min(after_validators / 4).max(1);
        ConnectionLimits {
            handshakes,
            handshakes_per_address: self.handshakes_per_address.min(handshakes),
            per_validator,
            clients: self
                .clients
                .min(after_validators.saturating_sub(handshakes)),
        }
    }

    /// Descriptors a node with `validators` validators needs at most when every connection
    /// costs one: its connections at these limits, its peer links, and
    /// [`RESERVED_DESCRIPTORS`].
    pub fn descriptors(&self, validators: usize) -> usize {
        RESERVED_DESCRIPTORS
            + validators.saturating_sub(1)
            + self.per_validator * validators
            + self.handshakes
            + self.clients
    }
}

/// What a connection asks to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A validator of the set: its frames are consensus messages.
    Validator,
    /// A client or a gateway: its frames are [`ClientFrame`](crate::wire::ClientFrame)s, and
    /// the node writes replies back on the same connection.
    Client,
}

/// Why a node refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// [`ConnectionLimits::handshakes`] handshakes are in progress already.
    #[error("the node runs as many handshakes as it may")]
    TooManyHandshakes,
    /// [`ConnectionLimits::handshakes_per_address`] handshakes from the connection's source
    /// address are in progress already.
    #[error("the node runs as many handshakes from this address as it may")]
    TooManyFromAddress,
    /// The handshake finished without a key the node can read.
    #[error("the handshake proved no ed25519 key")]
    NoKey,
    /// The connection asked for a role the node does not know (QUIC: an unknown ALPN).
    #[error("the connection asked for no known role")]
    UnknownRole,
    /// The key asked to be a validator and is not one of the set.
    #[error("the key is not a validator's")]
    UnknownKey,
    /// The validator key holds [`ConnectionLimits::per_validator`] connections already.
    #[error("the validator holds as many connections as it may")]
    TooManyValidatorConnections,
    /// [`ConnectionLimits::clients`] clients are connected already.
    #[error("the node serves as many clients as it may")]
    TooManyClients,
}

impl Refusal {
    /// The label the refusal is counted under in `pbft_messages_rejected_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyHandshakes => "too_many_handshakes",
            Refusal::TooManyFromAddress => "too_many_from_address",
            Refusal::NoKey => "no_peer_key",
            Refusal::UnknownRole => "unknown_protocol",
            Refusal::UnknownKey => "unknown_key",
            Refusal::TooManyValidatorConnections => "too_many_validator_connections",
            Refusal::TooManyClients => "too_many_clients",
        }
    }
}

/// Who may connect as a validator now: the keys of the node's epoch (and of validators a
/// committed change adds), as [`crate::peers::Peers`] keeps them; a fixed set for a node
/// whose set never changes (a gateway, tests).
pub trait Members: Send + Sync + std::fmt::Debug {
    /// Whether `key` is admitted as a validator.
    fn is_member(&self, key: &PublicKey) -> bool;
}

impl Members for ValidatorSet {
    fn is_member(&self, key: &PublicKey) -> bool {
        self.id_of(key).is_some()
    }
}

/// Whether `key` may ask for `role` at all: a validator's role only with a key of
/// `members`; a client's with any key (every request carries its client's signature). How
/// many may connect is [`Connections`]' business.
pub fn admits(members: &dyn Members, key: &PublicKey, role: Role) -> Result<(), Refusal> {
    match role {
        Role::Validator if !members.is_member(key) => Err(Refusal::UnknownKey),
        Role::Validator | Role::Client => Ok(()),
    }
}

/// Counts a node's connections by kind, so that no one can make it hold more than its
/// [`ConnectionLimits`] (each costs buffers and a task, on TCP a descriptor) however fast
/// they connect, and no number of clients keeps a validator out.
#[derive(Debug)]
pub struct Connections {
    members: Arc<dyn Members>,
    limits: ConnectionLimits,
    handshakes: Mutex<Handshakes>,
    clients: AtomicUsize,
    /// Established connections of each validator key that holds any (members only, so at
    /// most the set's size).
    per_validator: Mutex<HashMap<PublicKey, usize>>,
}

/// The handshakes in progress: how many, and from which addresses (an address is present
/// only while it has one, so the map holds at most [`ConnectionLimits::handshakes`]).
#[derive(Debug, Default)]
struct Handshakes {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The address handshakes are counted under: an IPv4 address as it is (an IPv4-mapped IPv6
/// address as the IPv4 one), an IPv6 address by its /64, the block one host is given (RFC
/// 6177), so a host cannot take more handshakes by cycling its addresses.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// A handshake in progress: its place in the handshake pool, freed when it is dropped or
/// turned into a [`Slot`].
#[derive(Debug)]
pub struct Handshake {
    connections: Arc<Connections>,
    from: IpAddr,
}

/// An established connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    connections: Arc<Connections>,
    /// `Some(key)`: a place of validator `key`; `None`: a client place.
    validator: Option<PublicKey>,
}

/// Takes one of at most `limit` places counted by `count`.
fn take(count: &AtomicUsize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
            (taken < limit).then_some(taken + 1)
        })
        .is_ok()
}

impl Connections {
    /// The connection counts of a node that admits `members` as validators, held within
    /// `limits`.
    pub fn new(members: Arc<dyn Members>, limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            members,
            limits,
            handshakes: Mutex::default(),
            clients: AtomicUsize::new(0),
            per_validator: Mutex::default(),
        })
    }

    /// Whether `key` is admitted as a validator now: a connection admitted earlier whose key
    /// has since left the set is closed when this turns false.
    pub fn is_member(&self, key: &PublicKey) -> bool {
        self.members.is_member(key)
    }

    fn per_validator(&self) -> std::sync::MutexGuard<'_, HashMap<PublicKey, usize>> {
        self.per_validator.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handshakes(&self) -> std::sync::MutexGuard<'_, Handshakes> {
        // The counts stay consistent whatever panicked while holding them: take them anyway.
        self.handshakes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a handshake place for a connection that arrived from `from`, or refuses with
    /// [`Refusal::TooManyHandshakes`] or [`Refusal::TooManyFromAddress`] (the transport
    /// drops the connection and counts the refusal). QUIC calls it only once the address is
    /// validated (after a Retry), so a spoofed address takes nothing.
    pub fn handshake(self: &Arc<Self>, from: IpAddr) -> Result<Handshake, Refusal> {
        let from = source(from);
        let mut handshakes = self.handshakes();
        if handshakes.total >= self.limits.handshakes {
            return Err(Refusal::TooManyHandshakes);
        }
        let at_address = handshakes.by_address.get(&from).copied().unwrap_or(0);
        if at_address >= self.limits.handshakes_per_address {
            return Err(Refusal::TooManyFromAddress);
        }
        handshakes.by_address.insert(from, at_address + 1);
        handshakes.total += 1;
        Ok(Handshake {
            connections: self.clone(),
            from,
        })
    }

    /// The limits these counts are held within.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Handshakes in progress now.
    pub fn handshaking(&self) -> usize {
        self.handshakes().total
    }

    /// Established client connections now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }
}

impl Handshake {
    /// The handshake proved `key`, which asks for `role`: takes a place for the established
    /// connection (among `key`'s places if it is a validator's, else among the clients'),
    /// or refuses, with the reason. The handshake's place is freed either way.
    pub fn admit(self, key: &PublicKey, role: Role) -> Result<Slot, Refusal> {
        let connections = &self.connections;
        admits(connections.members.as_ref(), key, role)?;
        let limits = &connections.limits;
        let validator = match role {
            Role::Validator => Some(*key),
            Role::Client => None,
        };
        let taken = match validator {
            Some(key) => {
                let mut held = connections.per_validator();
                let count = held.entry(key).or_insert(0);
                (*count < limits.per_validator)
                    .then(|| *count += 1)
                    .ok_or(Refusal::TooManyValidatorConnections)
            }
            None => take(&connections.clients, limits.clients)
                .then_some(())
                .ok_or(Refusal::TooManyClients),
        };
        taken.map(|()| Slot {
            connections: connections.clone(),
            validator,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut handshakes = self.connections.handshakes();
        handshakes.total -= 1;
        if let Some(at_address) = handshakes.by_address.get_mut(&self.from) {
            *at_address -= 1;
            if *at_address == 0 {
                handshakes.by_address.remove(&self.from);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.validator {
            Some(key) => {
                let mut held = self.connections.per_validator();
                if let Some(count) = held.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        held.remove(&key);
                    }
                }
            }
            None => {
                self.connections.clients.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::Keypair;

    fn key(seed: u8) -> PublicKey {
        Keypair::from_seed(&[seed; 32]).public_key()
    }

    /// Two validators (keys 1 and 2) and small limits.
    fn connections(limits: ConnectionLimits) -> Arc<Connections> {
        Connections::new(
            Arc::new(ValidatorSet::new(0, &[key(1), key(2)]).unwrap()),
            limits,
        )
    }

    const SMALL: ConnectionLimits = ConnectionLimits {
        handshakes: 4,
        handshakes_per_address: 2,
        per_validator: 2,
        clients: 3,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn handshakes_are_bounded_overall_and_per_address_and_freed() {
        let connections = connections(SMALL);
        let mut held: Vec<Handshake> = (0..2)
            .map(|_| connections.handshake(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            connections.handshake(ip("10.0.0.1")).map(drop),
            Err(Refusal::TooManyFromAddress)
        );
        // The same host through an IPv4-mapped address is the same address.
        assert_eq!(
            connections.handshake(ip("::ffff:10.0.0.1")).map(drop),
            Err(Refusal::TooManyFromAddress)
        );
        held.push(connections.handshake(ip("10.0.0.2")).unwrap());
        // Another address of the same IPv6 /64 is the same host.
        held.push(connections.handshake(ip("2001:db8::1")).unwrap());
        assert_eq!(connections.handshaking(), 4);
        assert_eq!(
            connections.handshake(ip("10.0.0.3")).map(drop),
            Err(Refusal::TooManyHandshakes)
        );
        drop(held.pop());
        held.push(connections.handshake(ip("2001:db8::2")).unwrap());
        assert_eq!(
            connections.handshake(ip("2001:db8::3")).map(drop),
            Err(Refusal::TooManyHandshakes)
        );
        // A finished handshake frees its place, whether it was admitted or refused.
        let admitted = held.pop().unwrap().admit(&key(9), Role::Client).unwrap();
        assert!(held.pop().unwrap().admit(&key(9), Role::Validator).is_err());
        assert_eq!(connections.handshaking(), 2);
        drop(held);
        assert_eq!(connections.handshaking(), 0);
        // Freed places are reusable, and no address is remembered once it has none.
        let again: Vec<Handshake> = (0..2)
            .map(|_| connections.handshake(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(connections.handshakes().by_address.len(), 1);
        drop((again, admitted));
    }

    #[test]
    fn with_every_client_place_taken_a_validator_still_gets_in() {
        let connections = connections(SMALL);
        let handshake = || connections.handshake(ip("10.0.0.1")).unwrap();
        let clients: Vec<Slot> = (0..3)
            .map(|seed| handshake().admit(&key(10 + seed), Role::Client).unwrap())
            .collect();
        assert_eq!(connections.clients(), 3);
        assert_eq!(
            handshake().admit(&key(20), Role::Client).map(drop),
            Err(Refusal::TooManyClients)
        );
        // A validator's key as a client competes with the clients.
        assert_eq!(
            handshake().admit(&key(1), Role::Client).map(drop),
            Err(Refusal::TooManyClients)
        );
        // As a validator it has places of its own: as many as the limit, for reconnects.
        let first = handshake().admit(&key(1), Role::Validator).unwrap();
        let second = handshake().admit(&key(1), Role::Validator).unwrap();
        assert_eq!(
            handshake().admit(&key(1), Role::Validator).map(drop),
            Err(Refusal::TooManyValidatorConnections)
        );
        // Another validator's places are its own.
        let other = handshake().admit(&key(2), Role::Validator).unwrap();
        // A key not in the set asking to be a validator is refused, places or not.
        assert_eq!(
            handshake().admit(&key(3), Role::Validator).map(drop),
            Err(Refusal::UnknownKey)
        );
        // Freed places are reusable, by kind.
        drop(first);
        let third = handshake().admit(&key(1), Role::Validator).unwrap();
        drop(clients);
        assert_eq!(connections.clients(), 0);
        let client = handshake().admit(&key(20), Role::Client).unwrap();
        assert_eq!(connections.clients(), 1);
        drop((second, other, third, client));
        assert!(connections.per_validator().is_empty(), "every place freed");
    }

    #[test]
    fn limits_shrink_to_the_descriptors_a_node_may_hold() {
        let defaults = ConnectionLimits::default();
        // Plenty of descriptors: the defaults.
        assert_eq!(defaults.within_descriptors(1 << 20, 4), defaults);
        // 256 descriptors, 4 validators: 64 reserved, 3 peer links, 16 validator places;
        // of the 173 left, a quarter handshakes and the rest clients.
        let small = defaults.within_descriptors(256, 4);
        assert_eq!(
            small,
            ConnectionLimits {
                handshakes: 43,
                handshakes_per_address: 32,
                per_validator: 4,
                clients: 130,
            }
        );
        assert!(small.descriptors(4) <= 256);
        // Fewer descriptors than the validators' places: no clients, one handshake at a time.
        let starved = defaults.within_descriptors(70, 4);
        assert_eq!((starved.clients, starved.handshakes), (0, 1));
        assert!(starved.descriptors(4) > 70);
    }

    #[test]
    fn refusals_are_labelled_for_the_metrics() {
        // The labels are the metrics' contract: dashboards and tests read them.
        assert_eq!(Refusal::UnknownKey.reason(), "unknown_key");
        assert_eq!(Refusal::TooManyClients.reason(), "too_many_clients");
        assert_eq!(Refusal::TooManyHandshakes.reason(), "too_many_handshakes");
    }
}
