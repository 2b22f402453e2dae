//! The gateway follows the validator set across epochs ([`crate::EpochChange`]): a validator
//! hands it each change once per epoch; the gateway checks it with the set it holds, checks
//! replies with the new set from then on, and hands each client the changes it lacks with
//! its next answer ([`super::GatewayOutput::Answered`]), which the client checks again.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use super::{Gateway, REPLY_CACHE};
use crate::certificate::CertificateError;
use crate::client::{ClientError, ReplyCache};
use crate::config::ValidatorSet;
use crate::crypto::PublicKey;
use crate::epoch::{EpochChange, verify_epoch_change};

/// The changes a gateway followed, and the clients it handed them to.
#[derive(Debug, Default)]
pub(super) struct Chain {
    /// Every change since genesis the gateway checked, oldest first.
    changes: Vec<EpochChange>,
    /// Clients handed the whole chain; at most `max_sessions`, then they start over (a
    /// client handed a change twice ignores the repeat).
    told: BTreeSet<PublicKey>,
}

impl Chain {
    /// `client` connected again: it is handed the chain again with its next answer.
    pub(super) fn forget(&mut self, client: &PublicKey) {
        self.told.remove(client);
    }
}

impl Gateway {
    /// Follows the validator set into the epoch `change` starts, as
    /// [`crate::Client::enter_epoch`] does: replies gathered so far are dropped (ids moved)
    /// and come again with retries.
    ///
    /// # Errors
    ///
    /// [`crate::verify_epoch_change`]'s; nothing changes then.
    pub fn enter_epoch(&mut self, change: &EpochChange) -> Result<(), CertificateError> {
        let chain = self.config.chain_id;
        self.validators = verify_epoch_change(&chain, &self.validators, change)?;
        self.views.clear();
        self.view = 0;
        self.replies = ReplyCache::new(REPLY_CACHE);
        self.pending.values_mut().for_each(|p| p.votes.clear());
        Ok(())
    }

    /// The validator set replies are checked with; ids are positions in it.
    pub fn validators(&self) -> &ValidatorSet {
        &self.validators
    }

    /// A change a validator handed over: followed if it ends this gateway's epoch (one of an
    /// epoch passed already is a repeat), and passed on to the clients.
    pub(super) fn on_epoch_change(&mut self, change: &EpochChange) -> Result<(), ClientError> {
        if change.state.epoch != self.validators.epoch() {
            return Ok(());
        }
        self.enter_epoch(change).map_err(ClientError::EpochChange)?;
        self.epochs.changes.push(change.clone());
        self.epochs.told.clear();
        Ok(())
    }

    /// The changes `client` was not handed yet, for its answer: the whole chain, once per
    /// epoch and session (a client that connected late, or connects again after a restart,
    /// starts from genesis).
    pub(super) fn chain_for(&mut self, client: PublicKey) -> Vec<EpochChange> {
        if self.epochs.changes.is_empty() || !self.epochs.told.insert(client) {
            return Vec::new();
        }
        if self.epochs.told.len() > self.config.max_sessions {
            self.epochs.told.clear();
            self.epochs.told.insert(client);
        }
        self.epochs.changes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::EpochState;
    use crate::gateway::GatewayConfig;
    use crate::testing::{chain, client_key, validator_set};
    use crate::view_change::StableCheckpoint;

    #[test]
    fn a_client_is_handed_the_chain_once_per_epoch_and_again_when_it_reconnects() {
        let mut gateway = Gateway::new(GatewayConfig::new(chain()), validator_set(4)).unwrap();
        let client = client_key(0).public_key();
        gateway.open(0, client).unwrap();
        assert!(gateway.chain_for(client).is_empty(), "no epoch changed");
        // The chain's contents are checked where it is followed; here only who gets it.
        gateway.epochs.changes.push(EpochChange {
            checkpoint: StableCheckpoint::genesis(),
            body: crate::crypto::Digest::default(),
            state: EpochState::default(),
        });
        assert_eq!(gateway.chain_for(client).len(), 1);
        assert!(gateway.chain_for(client).is_empty(), "once per epoch");
        // Reopening an open session changes nothing; a new session gets it again.
        gateway.open(1, client).unwrap();
        assert!(gateway.chain_for(client).is_empty());
        gateway.close(&client);
        gateway.open(2, client).unwrap();
        assert_eq!(
            gateway.chain_for(client).len(),
            1,
            "handed again after reconnecting"
        );
    }
}
