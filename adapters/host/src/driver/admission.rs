//! Who may hold a connection to a node: a bounded number of connection slots, and the rule
//! that admits a proven key as a validator or a client before a byte of its stream is read.
//!
//! A refusal is a [`Refusal`]: its [`Refusal::reason`] labels the metrics, its `Display` is
//! for logs, and a transport that can tell the other side why (QUIC's close codes) maps it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pbft_core::{PublicKey, ValidatorSet};

/// Most clients connected to one node at once; a transport refuses more.
pub const MAX_CLIENTS: usize = 4096;

/// Most connections a node holds at once, handshaking or established: every client it
/// admits, plus room for its peers' connections and their reconnects.
pub const MAX_CONNECTIONS: usize = MAX_CLIENTS + 256;

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
    /// The node holds [`MAX_CONNECTIONS`] already.
    #[error("the node holds as many connections as it may")]
    TooManyConnections,
    /// The handshake finished without a key the node can read.
    #[error("the handshake proved no ed25519 key")]
    NoKey,
    /// The connection asked for a role the node does not know (QUIC: an unknown ALPN).
    #[error("the connection asked for no known role")]
    UnknownRole,
    /// The key asked to be a validator and is not one of the set.
    #[error("the key is not a validator's")]
    UnknownKey,
    /// [`MAX_CLIENTS`] clients are connected already.
    #[error("the node serves as many clients as it may")]
    TooManyClients,
}

impl Refusal {
    /// The label the refusal is counted under in `pbft_messages_rejected_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::NoKey => "no_peer_key",
            Refusal::UnknownRole => "unknown_protocol",
            Refusal::UnknownKey => "unknown_key",
            Refusal::TooManyClients => "too_many_clients",
        }
    }
}

/// Whether `key` may connect as `role`, given `connected` clients: the admission rule every
/// transport applies before reading a byte.
pub fn admits(
    validators: &ValidatorSet,
    key: &PublicKey,
    role: Role,
    connected: usize,
) -> Result<(), Refusal> {
    match role {
        Role::Validator if validators.id_of(key).is_some() => Ok(()),
        Role::Validator => Err(Refusal::UnknownKey),
        Role::Client if connected < MAX_CLIENTS => Ok(()),
        Role::Client => Err(Refusal::TooManyClients),
    }
}

/// Counts a node's open connections, so that no one can make it hold more than
/// [`MAX_CONNECTIONS`] (each costs buffers and a task) however fast they connect.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
}

/// One open connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(Arc<Connections>);

impl Connections {
    /// Takes a place for a new connection, or refuses with
    /// [`Refusal::TooManyConnections`] when the node holds the most it may (the transport
    /// drops the connection and counts the refusal).
    pub fn take(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < MAX_CONNECTIONS).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(Slot(self.clone())),
            Err(_) => Err(Refusal::TooManyConnections),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::Keypair;

    #[test]
    fn connection_slots_are_bounded_and_freed() {
        let connections = Arc::new(Connections::default());
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| connections.take().expect("below the bound"))
            .collect();
        assert_eq!(
            connections.take().map(drop),
            Err(Refusal::TooManyConnections),
            "one past the bound"
        );
        drop(slots);
        assert_eq!(connections.open(), 0);
        assert!(connections.take().is_ok());
    }

    #[test]
    fn validators_are_admitted_by_key_and_clients_up_to_the_bound() {
        let validator = Keypair::from_seed(&[1; 32]).public_key();
        let stranger = Keypair::from_seed(&[2; 32]).public_key();
        let set = ValidatorSet::new(0, &[validator]).unwrap();
        assert_eq!(
            admits(&set, &validator, Role::Validator, MAX_CLIENTS),
            Ok(())
        );
        assert_eq!(
            admits(&set, &stranger, Role::Validator, 0),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(
            admits(&set, &stranger, Role::Client, MAX_CLIENTS - 1),
            Ok(())
        );
        assert_eq!(
            admits(&set, &validator, Role::Client, MAX_CLIENTS),
            Err(Refusal::TooManyClients)
        );
        // The labels are the metrics' contract: dashboards and tests read them.
        assert_eq!(Refusal::UnknownKey.reason(), "unknown_key");
        assert_eq!(Refusal::TooManyClients.reason(), "too_many_clients");
    }
}
