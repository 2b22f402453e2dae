//! Validators outside this epoch's set: those an epoch change removed and those the next
//! one adds.
//!
//! A replica proved out of a later set retires ([`Replica::retire_if_removed`]), wherever it
//! stands: it signs nothing more, and serves the end of its last epoch to the validators of
//! that epoch still in it ([`Replica::serve_retired`]), who may lack the boundary's
//! certificate, batches or state that only the ones which left hold. One that lags in its old
//! epoch is told how the epoch ended when it asks ([`Replica::on_outsider`]). And while a
//! change is scheduled, a replica asks the validators it adds too: one that entered the next
//! epoch holds the change ([`Replica::on_newcomer_change`]).

use alloc::vec::Vec;

use super::Mode;
use super::Replica;
use super::output::{Destination, Output, Record};
use crate::config::ReplicaId;
use crate::crypto::PublicKey;
use crate::epoch::EpochChange;
use crate::error::Error;
use crate::message::Message;

/// Outsiders whose last answer is remembered (for the once-per-interval limit).
const MAX_OUTSIDERS: usize = 4096;

impl Replica {
    /// Retires once the changes ahead prove this replica's key out of a later set, wherever
    /// it stands: every epoch it was in is over (each change is the certificate of its
    /// epoch's last checkpoint), so nothing it would still do counts. The changes up to the
    /// one that removed it are logged first, so a restart knows ([`ConfigError::Removed`]).
    /// Returns whether it retired.
    ///
    /// [`ConfigError::Removed`]: crate::ConfigError::Removed
    pub(super) fn retire_if_removed(&mut self) -> bool {
        let own = self.signer.keypair().public_key();
        let Some(last) = self
            .epochs
            .ahead
            .iter()
            .position(|change| !change.validators().contains(&own))
        else {
            return false;
        };
        let changes: Vec<EpochChange> = self.epochs.ahead.drain(..=last).collect();
        for change in changes {
            self.outbox.persist(Record::EpochStarted(change.clone()));
            self.outbox.push(Output::EpochStarted(change.clone()));
            self.epochs.changes.push(change);
        }
        self.retire();
        true
    }

    /// What a retired replica still does: it serves the end of its last epoch to that
    /// epoch's validators still in it, who may lack the boundary's certificate, batches or
    /// state that only the validators which left hold. A status of that epoch gets the
    /// changes since and the committed batches up to the boundary (once per retransmit
    /// interval), a state fetch the state it holds. It signs nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Retired`] for anything else, or from a key not in its last set; the errors of
    /// serving a status or a fetch.
    pub(super) fn serve_retired(&mut self, from: &PublicKey, bytes: &[u8]) -> Result<(), Error> {
        let peer = self.validators.id_of(from).ok_or(Error::Retired)?;
        match Message::decode(bytes, self.config.max_message_bytes)? {
            Message::Status(status) if status.epoch == self.validators.epoch() => {
                if status.slots.len() as u64 > self.config.window {
                    return Err(Error::UnexpectedMessage("status longer than the window"));
                }
                let shown = super::retransmit::status_fingerprint(&status, self.progress_shown());
                if !self.timers.may_serve(peer, shown) {
                    return Err(Error::RateLimited);
                }
                let to = Destination::Outside(*from);
                let changes: Vec<Vec<u8>> = self
                    .epochs
                    .changes
                    .iter()
                    .filter(|change| change.state.epoch >= status.epoch)
                    .map(|change| Message::EpochChange(change.clone()).encode())
                    .collect();
                let boundary = self.epochs.changes.last().map_or(0, EpochChange::boundary);
                for bytes in changes {
                    self.send(to.clone(), bytes);
                }
                let last = boundary.min(status.executed.saturating_add(self.config.window));
                self.send_committed(&to, &status, last);
                Ok(())
            }
            Message::FetchState(fetch) => self.on_fetch_state(peer, fetch),
            _ => Err(Error::Retired),
        }
    }

    /// An input at a retired replica: what [`Replica::serve_retired`] serves, counted.
    pub(super) fn retired_input(
        &mut self,
        now: u64,
        from: &PublicKey,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.timers.enter(now);
        let result = self.serve_retired(from, bytes);
        self.count(result)
    }

    /// Where an answer to validator `peer` of this replica's set goes: by id, or by key once
    /// retired (its host maps ids with the next epoch's set by then).
    pub(super) fn answer_to(&self, peer: ReplicaId) -> Destination {
        match (self.epochs.retired, self.validators.key(peer)) {
            (true, Some(key)) => Destination::Outside(key.public_key()),
            _ => Destination::Validator(peer),
        }
    }

    /// Takes no more part: this replica's key is not in the new set. It keeps its committed
    /// batches and checkpoint states to serve the end of its epoch
    /// ([`Replica::serve_retired`]).
    pub(super) fn retire(&mut self) {
        self.epochs.retired = true;
        self.epochs.ahead.clear();
        self.log
            .retain(|_, slot| slot.certificate.is_some() && slot.batch.is_some());
        self.ahead.clear();
        self.view_changes.clear();
        self.transfer = None;
        self.intake.clear_watched();
        let _ = self.intake.drain_pending();
        self.mode = Mode::Normal;
    }

    /// A message from a key outside this epoch's set. A status from a validator an epoch
    /// change removed, still in an earlier epoch, is answered with the changes since its
    /// epoch up to the one that removed it, and nothing else, at most once per retransmit
    /// interval: it retires ([`Replica::retire_if_removed`]) instead of waiting in its old
    /// epoch for good. An epoch change
    /// from a validator the scheduled change adds is taken as a peer's
    /// ([`Replica::on_newcomer_change`]).
    ///
    /// # Errors
    ///
    /// [`Error::NotAValidator`] for anything else; [`Error::RateLimited`] for a status within
    /// the interval.
    pub(super) fn on_outsider(&mut self, from: &PublicKey, message: Message) -> Result<(), Error> {
        if let Message::EpochChange(change) = message {
            return self.on_newcomer_change(from, change);
        }
        let Message::Status(status) = message else {
            return Err(Error::NotAValidator);
        };
        let removed = status.epoch < self.validators.epoch()
            && status.slots.len() as u64 <= self.config.window
            && self
                .set_of_epoch(status.epoch)
                .is_ok_and(|set| set.id_of(from).is_some());
        if !removed {
            return Err(Error::NotAValidator);
        }
        if !self.outsider_due(from) {
            return Err(Error::RateLimited);
        }
        let mut proof = Vec::new();
        for change in &self.epochs.changes {
            if change.state.epoch < status.epoch {
                continue;
            }
            proof.push(Message::EpochChange(change.clone()).encode());
            if !change.validators().contains(from) {
                break;
            }
        }
        for bytes in proof {
            self.send(Destination::Outside(*from), bytes);
        }
        Ok(())
    }

    /// Whether `outsider` (a removed or a coming validator) may be answered now: once per
    /// retransmit interval; if so, starts its interval.
    fn outsider_due(&mut self, outsider: &PublicKey) -> bool {
        let now = self.timers.now();
        let answered = &mut self.epochs.outsiders;
        if answered
            .get(outsider)
            .is_some_and(|&at| now < at.saturating_add(self.config.retransmit_ms))
        {
            return false;
        }
        // Only keys of some set get here; a long history of them starts over.
        if answered.len() >= MAX_OUTSIDERS {
            answered.clear();
        }
        answered.insert(*outsider, now);
        true
    }

    /// The validators the scheduled change adds: once they entered the next epoch, they hold
    /// the change that ends this one, which this replica may lack (the validators that
    /// certified the boundary may have left since).
    pub(super) fn newcomers(&self) -> Vec<PublicKey> {
        match &self.epochs.schedule {
            Some(next) => next
                .validators
                .iter()
                .filter(|key| self.validators.id_of(key).is_none())
                .copied()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The change that ends this epoch, from a validator the scheduled change adds (it
    /// entered the next epoch; the validators that certified the boundary may have left):
    /// checked as a peer's is, at most one a retransmit interval from each.
    fn on_newcomer_change(&mut self, from: &PublicKey, change: EpochChange) -> Result<(), Error> {
        if !self.newcomers().contains(from) {
            return Err(Error::NotAValidator);
        }
        if !self.outsider_due(from) {
            return Err(Error::RateLimited);
        }
        self.on_epoch_change(None, change)
    }
}
