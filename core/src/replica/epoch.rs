//! The replica's side of epochs ([`crate::epoch`]): a committed decision schedules the next
//! set ([`super::governance`]), the epoch orders nothing past its boundary (the primary fills the slots up to it
//! with empty batches), and once the boundary checkpoint is stable and this replica's state
//! there is the quorum's, the next epoch starts from it.
//!
//! Starting an epoch is a restore from memory: the replica rebuilds itself with
//! [`Replica::restore`] from its executed state at the boundary, the boundary's certificate as
//! its stable checkpoint and the chain of epoch changes as its only records. Everything the
//! old epoch held above the boundary (nothing an honest replica signed) is left behind; the
//! requests still waiting to be ordered are taken up again.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::Replica;
use super::output::{Destination, Output, Record};
use super::restore::ExecutedState;
use crate::certificate::Committed;
use crate::config::ReplicaId;
use crate::config::ValidatorSet;
use crate::crypto::PublicKey;
use crate::epoch::{EpochChange, EpochState, NextEpoch, verify_epoch_change};
use crate::error::Error;
use crate::message::{Message, Status};
use crate::statement::Request;
use crate::view_change::{StableCheckpoint, verify_checkpoint};

/// Where a replica stands in the chain of epochs.
#[derive(Debug, Default)]
pub(super) struct Epochs {
    /// The change of the validator set committed decisions scheduled (reconfigurations, convictions).
    pub(super) schedule: Option<NextEpoch>,
    /// The seq whose delivery last changed `schedule` (or the installed state's seq).
    pub(super) scheduled_at: u64,
    /// The changes from genesis to this epoch, oldest first.
    pub(super) changes: Vec<EpochChange>,
    /// Changes after this epoch, verified in order from it: a replica behind jumps to the
    /// last one's epoch through them when its peers no longer hold what it lacks.
    pub(super) ahead: Vec<EpochChange>,
    /// The set of each ended epoch, its keys checked once (from `changes`).
    pub(super) sets: Vec<ValidatorSet>,
    /// Clients this replica handed the chain of changes in this epoch, and when (ms).
    pub(super) told: BTreeMap<PublicKey, u64>,
    /// Validators outside the set (removed, or coming) last answered, and when (ms).
    pub(super) outsiders: BTreeMap<PublicKey, u64>,
    /// Removed from the set by an epoch change: takes no more part.
    pub(super) retired: bool,
}

impl Replica {
    /// The validator set's part of the replicated state at checkpoint `seq`, just executed: the
    /// current one, or at the boundary this epoch started from (executed again after a
    /// restart whose store was behind it) the previous epoch's, which the change proves.
    pub(super) fn epoch_state(&self, seq: u64) -> EpochState {
        if let Some(change) = self.epochs.changes.last()
            && change.boundary() == seq
        {
            return change.state.clone();
        }
        EpochState {
            epoch: self.validators.epoch(),
            validators: self.validators.public_keys().collect(),
            next: self.epochs.schedule.clone(),
        }
    }

    /// The set of `epoch`, this one or an earlier one (from the change that ended it), to
    /// check its evidence with.
    ///
    /// # Errors
    ///
    /// [`Error::OtherEpoch`] for an epoch after this one.
    pub(super) fn set_of_epoch(&self, epoch: u64) -> Result<ValidatorSet, Error> {
        if epoch == self.validators.epoch() {
            return Ok(self.validators.clone());
        }
        self.epochs
            .sets
            .iter()
            .find(|set| set.epoch() == epoch)
            .cloned()
            .ok_or(Error::OtherEpoch {
                got: epoch,
                current: self.validators.epoch(),
            })
    }

    /// The gateways whose attestations this epoch takes: the genesis config's
    /// ([`crate::Config::attesting_gateways`]), as the chain of epoch changes has changed them
    /// since ([`crate::SetChange::AddGateway`]).
    pub fn attesting_gateways(&self) -> &[PublicKey] {
        self.gateways_of_epoch(self.validators.epoch())
    }

    /// The gateways of `epoch`, this one or an earlier one (this one's for an epoch the
    /// chain does not show: the chain starts at genesis for every replica a host builds,
    /// new, restored or joined, so only a wrong epoch number gets there).
    pub(super) fn gateways_of_epoch(&self, epoch: u64) -> &[PublicKey] {
        if epoch == 0 {
            return &self.config.attesting_gateways;
        }
        let started = |epoch| {
            self.epochs
                .changes
                .iter()
                .find(|change| change.epoch() == epoch)
        };
        match started(epoch).or_else(|| started(self.validators.epoch())) {
            Some(change) => change.gateways(),
            None => &self.config.attesting_gateways,
        }
    }

    /// The last seq `epoch` ordered, if it ended.
    pub(super) fn epoch_boundary(&self, epoch: u64) -> Option<u64> {
        self.epochs
            .changes
            .iter()
            .find(|change| change.state.epoch == epoch)
            .map(EpochChange::boundary)
    }

    /// Whether a committed conviction of `key` could still change the set: it is in this
    /// epoch's set and not already out of the scheduled one.
    pub(super) fn punishable(&self, key: &PublicKey) -> bool {
        punishable(&self.validators, self.epochs.schedule.as_ref(), key)
    }

    /// The last seq this epoch orders: the scheduled boundary, or none (`u64::MAX`).
    pub(super) fn epoch_end(&self) -> u64 {
        self.epochs
            .schedule
            .as_ref()
            .map_or(u64::MAX, |next| next.boundary)
    }

    /// Whether this replica waits for the slots up to a scheduled boundary to commit.
    pub(super) fn awaits_boundary(&self) -> bool {
        self.epochs
            .schedule
            .as_ref()
            .is_some_and(|next| self.last_delivered < next.boundary)
    }

    /// Whether the primary must propose an empty batch at its next seq to reach the boundary.
    pub(super) fn must_pad(&self) -> bool {
        self.epochs
            .schedule
            .as_ref()
            .is_some_and(|next| self.next_seq <= next.boundary)
    }

    /// Starts the next epoch if its boundary checkpoint is stable, this replica executed up
    /// to it, and its own state there is the quorum's (a diverged one is repaired first).
    pub(super) fn maybe_enter_epoch(&mut self) {
        self.maybe_jump();
        // A peer proved the epoch over, and this replica's own state at the boundary is the
        // one proved: enter as usual, whatever newer checkpoint it took to jump to meanwhile.
        if let Some(first) = self.epochs.ahead.first().cloned()
            && self.executed == first.boundary()
            && !self.repairing()
            && self
                .checkpoints
                .snapshot(first.boundary())
                .is_some_and(|s| {
                    s.manifest.digest(&self.config.chain_id) == first.checkpoint.digest
                })
        {
            self.enter_epoch(vec![first], None);
            return;
        }
        let Some(boundary) = self.epochs.schedule.as_ref().map(|next| next.boundary) else {
            return;
        };
        let stable = self.checkpoints.stable();
        if self.epochs.retired
            || stable.seq != boundary
            || self.executed < boundary
            || self.repairing()
        {
            return;
        }
        // Its own state there, or one it installed: the quorum's (a diverged one was found
        // when the checkpoint became stable, and is being repaired).
        let Some(snapshot) = self.checkpoints.snapshot(boundary) else {
            return;
        };
        let manifest = &snapshot.manifest;
        if manifest.digest(&self.config.chain_id) != stable.digest {
            return;
        }
        let change = EpochChange {
            checkpoint: stable.clone(),
            body: manifest.body_digest(),
            state: manifest.epoch.clone(),
        };
        self.enter_epoch(vec![change], None);
    }

    /// Jumps to the epoch the changes ahead reach once this replica installed the state of
    /// the checkpoint of that epoch it fetched ([`Replica::jump_target`]).
    fn maybe_jump(&mut self) {
        let Some(last) = self.epochs.ahead.last() else {
            return;
        };
        let stable = self.checkpoints.stable().clone();
        // A checkpoint inside the last epoch, or its start when that is more than one epoch
        // on (one epoch on, the start is this epoch's boundary: the next epoch is entered as
        // usual from there).
        let inside = stable.seq > last.boundary()
            || (self.epochs.ahead.len() > 1 && stable.seq == last.boundary());
        if !inside || self.executed != stable.seq || self.repairing() {
            return;
        }
        // The state of a checkpoint of the last epoch (its start included), which its set
        // certified: installed, not executed here.
        let installed = self
            .checkpoints
            .snapshot(stable.seq)
            .is_some_and(|snapshot| {
                snapshot.manifest.digest(&self.config.chain_id) == stable.digest
            });
        if installed {
            let changes = core::mem::take(&mut self.epochs.ahead);
            self.enter_epoch(changes, Some(stable));
        }
    }

    /// Leaves this epoch for the last one `changes` start (in order, the first ending this
    /// one), from the boundary's state, or from `jump` (a checkpoint of that last epoch whose
    /// state this replica installed).
    fn enter_epoch(&mut self, changes: Vec<EpochChange>, jump: Option<StableCheckpoint>) {
        let Some(change) = changes.last().cloned() else {
            return;
        };
        let seq = jump.as_ref().map_or(change.boundary(), |stable| stable.seq);
        let Some(state) = self.checkpoint_state(seq) else {
            return;
        };
        self.metrics.epochs_entered += changes.len() as u64;
        for change in &changes {
            self.outbox.persist(Record::EpochStarted(change.clone()));
            self.outbox.push(Output::EpochStarted(change.clone()));
        }
        self.tell_removed(&changes);
        let own = self.signer.keypair().public_key();
        if !change.validators().contains(&own) {
            self.epochs.changes.extend(changes);
            self.retire();
            return;
        }
        let mut history = core::mem::take(&mut self.epochs.changes);
        history.extend(changes);
        let executed = ExecutedState {
            executed: self.executed,
            client_floor: self.clients.floor(),
            clients: self.clients.records(),
            committed: self.committed_through(seq),
            checkpoints: vec![state],
        };
        let waiting = self.unordered_requests();
        let evidence = self.evidence.take_pending();
        let mut records: Vec<Record> = history.into_iter().map(Record::EpochStarted).collect();
        // A state jumped to may have a change of its own epoch scheduled already.
        let scheduled = jump.as_ref().and_then(|stable| {
            let next = self
                .checkpoints
                .snapshot(stable.seq)?
                .manifest
                .epoch
                .next
                .clone()?;
            Some(Record::Scheduled {
                seq: stable.seq,
                next,
            })
        });
        records.extend(jump.clone().map(Record::Stable));
        records.extend(scheduled.clone());
        let keypair = self.signer.keypair().duplicate();
        let next = Replica::restore(
            self.config.clone(),
            self.validators.clone(),
            keypair,
            records,
            executed,
        );
        let Ok(mut next) = next else {
            // The set is checked when the change is made (never empty, keys checked), and the
            // config held for the old set; a set the config cannot run is the one way here.
            self.retire();
            return;
        };
        next.outbox.take_from(&mut self.outbox);
        if let Some(stable) = jump {
            // Where it jumped to, after the changes that lead there.
            next.outbox.persist(Record::Stable(stable));
            next.outbox.extend_persist(scheduled);
        }
        next.metrics = core::mem::take(&mut self.metrics);
        let now = self.timers.now();
        let protected = self.recovery.enabled();
        *self = next;
        match protected {
            // A replica restored from an old copy may catch up into an epoch it had signed in
            // before: what peers hold of it is asked again, of the new epoch.
            true => self.check_for_rollback(now),
            false => self.enter(now),
        }
        for request in waiting {
            // Refusals (executed meanwhile, over a limit) are counted like any input's.
            let result = self.on_request(request, true);
            let _ = self.count(result);
        }
        // Evidence of the old epoch still convicts its key, if the new set holds it.
        for (evidence, offender) in evidence {
            self.found_evidence(evidence, offender);
        }
    }

    /// Sends the change that ends this epoch to the validators it removes: hosts stop
    /// admitting their keys once the new epoch starts, and one that had not yet seen the
    /// boundary's checkpoint learns from this that it is out, and retires.
    fn tell_removed(&mut self, changes: &[EpochChange]) {
        let Some(first) = changes.first() else {
            return;
        };
        let removed: Vec<PublicKey> = self
            .validators
            .public_keys()
            .filter(|key| !first.validators().contains(key))
            .collect();
        if removed.is_empty() {
            return;
        }
        let bytes = Message::EpochChange(first.clone()).encode();
        for key in removed {
            self.send(Destination::Outside(key), bytes.clone());
        }
    }

    /// Hands `client` the chain of changes, once per epoch, before this epoch's first reply
    /// to it: the reply is signed in this epoch, which the client checks only with the set
    /// the chain proves. At most `max_clients` remembered, then they start over.
    /// `again`: the client retransmitted, so it may have missed the chain (it restarted,
    /// or the messages came out of order): it is sent again, at most once per retransmit
    /// interval (anyone can replay a client's request to make replicas send it).
    pub(super) fn tell_epoch(&mut self, client: PublicKey, again: bool) {
        let now = self.timers.now();
        let due = match self.epochs.told.get(&client) {
            None => true,
            Some(&at) => again && now >= at.saturating_add(self.config.retransmit_ms),
        };
        if self.epochs.changes.is_empty() || !due {
            return;
        }
        if self.epochs.told.len() >= self.config.max_clients {
            self.epochs.told.clear();
        }
        self.epochs.told.insert(client, now);
        let chain: Vec<Vec<u8>> = self
            .epochs
            .changes
            .iter()
            .map(|change| Message::EpochChange(change.clone()).encode())
            .collect();
        for bytes in chain {
            self.send(Destination::Client(client), bytes);
        }
    }

    /// The committed batches at or below `boundary` this replica holds, for the next epoch's
    /// archive (to serve peers still catching up to the boundary).
    fn committed_through(&self, boundary: u64) -> Vec<Committed> {
        let logged = self.log.range(..=boundary).filter_map(|(_, slot)| {
            Some(Committed {
                batch: slot.batch.clone()?,
                certificate: slot.certificate.clone()?,
            })
        });
        self.archive.iter().cloned().chain(logged).collect()
    }

    /// Requests this replica holds that no batch ordered yet: the primary's queue and the
    /// watched ones.
    fn unordered_requests(&mut self) -> Vec<Request> {
        let mut requests = self.intake.drain_pending();
        requests.extend(self.intake.rewatch(0));
        self.intake.clear_watched();
        requests
    }

    /// A peer's proof that this replica's epoch ended: the boundary's certificate becomes
    /// the stable checkpoint, which this replica reaches by replaying batches or fetching the
    /// state, and then starts the next epoch. The changes of later epochs, each checked with
    /// the set the one before proved, are kept: a replica more than an epoch behind jumps to
    /// the last one's epoch by fetching the state of a checkpoint of it
    /// ([`Replica::jump_target`]), since its peers keep neither the batches nor the states of
    /// epochs long gone.
    ///
    /// # Errors
    ///
    /// [`Error::OtherEpoch`] for a change that does not continue the chain from this epoch
    /// (an older one is done, a later one needs the ones before it first);
    /// [`Error::Duplicate`] when this replica holds it already; [`Error::Certificate`] when
    /// it does not verify.
    pub(super) fn on_epoch_change(
        &mut self,
        peer: Option<ReplicaId>,
        change: EpochChange,
    ) -> Result<(), Error> {
        let current = self.validators.epoch();
        let expected = current + self.epochs.ahead.len() as u64;
        if change.state.epoch < expected {
            return Err(Error::Duplicate);
        }
        if change.state.epoch > expected {
            return Err(Error::OtherEpoch {
                got: change.state.epoch,
                current,
            });
        }
        // A change that fails its check costs its sender its signatures from its share.
        let now = self.timers.now();
        // A newcomer's (`None`) is rate-limited by its caller instead.
        if peer.is_some_and(|peer| !self.budget.allows(peer, now)) {
            return Err(Error::OverBudget);
        }
        let signers = change.checkpoint.signatures.len() as u64;
        if let Some(last) = self.epochs.ahead.last() {
            let set = last.validator_set()?;
            self.metrics.signatures_verified += signers;
            if let Err(err) = verify_epoch_change(&self.config.chain_id, &set, &change) {
                if let Some(peer) = peer {
                    self.budget.charge(peer, signers, now);
                }
                return Err(err.into());
            }
            self.epochs.ahead.push(change);
            self.retire_if_removed();
            return Ok(());
        }
        let boundary = change.boundary();
        if boundary < self.checkpoints.stable().seq {
            return Err(Error::Duplicate);
        }
        self.metrics.signatures_verified += signers;
        self.metrics.signatures_batch_verified += signers;
        if let Err(err) = verify_epoch_change(&self.config.chain_id, &self.validators, &change) {
            if let Some(peer) = peer {
                self.budget.charge(peer, signers, now);
            }
            return Err(err.into());
        }
        self.epochs.ahead.push(change.clone());
        if self.retire_if_removed() {
            return Ok(());
        }
        self.adopt_checkpoint(change.checkpoint);
        // A fetch of an older state gives way to the boundary's. Without one, the batches up
        // to the boundary come with the change; if they do not, the state at the boundary is
        // fetched once replay stalls ([`Replica::maybe_start_transfer`]).
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.target_seq() < boundary)
        {
            self.fetch_stable_state(false);
        }
        Ok(())
    }

    /// A stable checkpoint of the last epoch the changes ahead reach, at a replica more than
    /// an epoch behind: checked with that epoch's set (which the chain proved), it becomes the
    /// state to fetch. Once installed, the replica enters that epoch ([`Replica::maybe_jump`]).
    /// It is not logged: after a restart the replica starts over from its own epoch.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] for one not above the target held; [`Error::Certificate`] when it
    /// does not verify with that set.
    pub(super) fn jump_target(&mut self, checkpoint: StableCheckpoint) -> Result<(), Error> {
        let Some(last) = self.epochs.ahead.last() else {
            return Err(Error::UnexpectedMessage("checkpoint of another epoch"));
        };
        let set = last.validator_set()?;
        if checkpoint.seq < last.boundary() {
            return Err(Error::Duplicate);
        }
        verify_checkpoint(&self.config.chain_id, &set, &checkpoint)?;
        self.checkpoints.take(checkpoint);
        // A transfer under way goes on unless it is exhausted: under load each status would
        // otherwise bring a newer checkpoint and restart it before it ends.
        self.maybe_start_transfer();
        Ok(())
    }

    /// Answers a peer's status of another epoch: a peer behind gets every change since its
    /// epoch (about a kilobyte each at n = 7), this replica's stable checkpoint to jump to,
    /// and, when it is in the epoch just before this one, the
    /// committed batches up to its boundary it lacks (a window at most; its QCs are of the
    /// peer's epoch); one ahead gets this replica's status to answer with them.
    pub(super) fn send_epoch_changes(&mut self, to: Destination, status: &Status) {
        let epoch = status.epoch;
        if epoch > self.validators.epoch() {
            let bytes = Message::Status(self.status()).encode();
            self.send(to, bytes);
            return;
        }
        let missed: Vec<Vec<u8>> = self
            .epochs
            .changes
            .iter()
            .filter(|change| change.state.epoch >= epoch)
            .map(|change| Message::EpochChange(change.clone()).encode())
            .collect();
        for bytes in missed {
            self.metrics.retransmitted += 1;
            self.send(to.clone(), bytes);
        }
        if epoch < self.validators.epoch() {
            // Where to jump to, once it holds the changes, if what it lacks is gone.
            let stable = Message::Checkpoint(self.checkpoints.stable().clone()).encode();
            self.send(to.clone(), stable);
        }
        if epoch + 1 == self.validators.epoch() {
            let base = self.validators.base().0;
            let last = base.min(status.executed.saturating_add(self.config.window));
            self.send_committed(&to, status, last);
        }
    }

    /// Whether `record` belongs to this replica's epoch, which started from a checkpoint above
    /// 0: votes, proposals and certificates at or below that checkpoint are of an older epoch
    /// (or final either way), and a view change or new view is this epoch's only if its
    /// signature verifies over this epoch's statement.
    pub(super) fn signed_in_epoch(&self, record: &Record) -> bool {
        let chain = &self.config.chain_id;
        let epoch = self.validators.epoch();
        let base = self.validators.base().0;
        match record {
            Record::Signed(vote) | Record::Accepted(vote, _) => vote.seq > base,
            Record::Prepared(prepared, _) => prepared.proposal.seq > base,
            Record::ViewChange(change) => self
                .signer
                .keypair()
                .verifying_key()
                .verify(&change.signed_digest(chain, epoch), &change.signature)
                .is_ok(),
            Record::NewView(new_view) => self
                .validators
                .key(self.validators.primary(new_view.view))
                .is_some_and(|key| {
                    key.verify(&new_view.signed_digest(chain, epoch), &new_view.signature)
                        .is_ok()
                }),
            Record::Fenced(fence, _) => fence.epoch == epoch,
            // Evidence of an older epoch still convicts its key while it is in the set.
            Record::Stable(_)
            | Record::Committed(..)
            | Record::Scheduled { .. }
            | Record::EpochStarted(_)
            | Record::Evidence(_) => true,
        }
    }

    /// The epoch changes from genesis to the current epoch, oldest first: the chain a client
    /// holding the genesis set follows ([`crate::verify_qc_across_epochs`]).
    pub fn epoch_changes(&self) -> &[EpochChange] {
        &self.epochs.changes
    }

    /// The change a committed decision scheduled, if any.
    pub fn scheduled_epoch(&self) -> Option<&NextEpoch> {
        self.epochs.schedule.as_ref()
    }

    /// Whether this replica was removed from the validator set: it takes no more part (it
    /// only serves the end of its last epoch to that epoch's validators, see
    /// `Replica::serve_retired`), and every other input is refused with [`Error::Retired`].
    pub fn is_retired(&self) -> bool {
        self.epochs.retired
    }
}

/// Whether a committed conviction of `key` could still change the set: it is in
/// `validators` and not already out of the `scheduled` next epoch.
pub(super) fn punishable(
    validators: &ValidatorSet,
    scheduled: Option<&NextEpoch>,
    key: &PublicKey,
) -> bool {
    validators.id_of(key).is_some() && scheduled.is_none_or(|next| next.validators.contains(key))
}
