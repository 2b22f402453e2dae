//! Coming back after a crash: what must be persisted, and how a replica is rebuilt from it.
//!
//! Two things survive a crash, and [`Replica::restore`] takes both:
//!
//! - the **records** ([`Record`]) the replica emitted as `Output::Persist`, each durable
//!   before the message carrying its signature left: every vote it signed, every pre-prepare
//!   it accepted with its batch, every prepared certificate it assembled, every stable
//!   checkpoint, its view changes and the new views it entered. They give back the view, the prepared certificates its next view change must
//!   carry, and the index of signed statements that [`Replica::sign`] consults, so the
//!   restored replica can repeat a vote it cast but never sign a different one;
//! - the host's **application store** as of one executed seq ([`ExecutedState`]): the state,
//!   the exactly-once table and the committed batches with their QCs. The replica resumes
//!   executing after that seq without asking anyone, serves those batches to peers, and signs
//!   nothing at or below it but what its QCs certify.
//!
//! The host's order of durability is the contract: the records of a round first, then the
//! application store (which may lag them, never lead them), then the messages of the round.
//! A store may lag by many rounds: the log's [`Record::Committed`] redo records bring it back
//! to where the replies said, as long as the store is durable before the log is compacted.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::exactly_once::{ClientRecord, ClientTable};
use super::output::Record;
use super::slot::Slot;
use super::{HeldViewChange, Mode, Replica};
use crate::certificate::Committed;
use crate::config::{Config, ConfigError, ValidatorSet};
use crate::crypto::{Digest, Keypair};
use crate::epoch::EpochChange;
use crate::new_view::null_digest;
use crate::state::{Snapshot, decode_core_state};
use crate::statement::{Batch, Phase, Vote};
use crate::view_change::StableCheckpoint;

/// What a host keeps durably beside its application state, as of the last batch it executed,
/// and hands to [`Replica::restore`] after a crash.
///
/// A host keeps it up to date from the outputs: for each [`super::Delivery`] it executes, in
/// one atomic write with the application's changes, it stores one [`ClientRecord`] per
/// executed request (the result it returned, or the replica's for a request in
/// [`super::Delivery::decided`]), deletes the rows of `forgotten` clients, sets
/// the floor to `client_floor` and `executed` to the delivery's seq, and keeps the batch with
/// its QC; an [`super::Install`] replaces the table and `executed` wholesale. The write may
/// be durable only after the records (`Output::Persist`) that came before it, never before.
/// Either it is durable before the `Send`s after the delivery leave (they carry the replies),
/// or the host keeps the log's [`Record::Committed`] redo records until it is (it must be
/// durable before the log is compacted): restore delivers those again.
///
/// At a checkpoint delivery it also keeps [`Replica::checkpoint_state`] (after `executed`),
/// and the installed one after an install; states below the stable checkpoint may go.
/// Batches may be dropped from the oldest once they are at or below the stable checkpoint
/// minus `retained_batches`; the replica restores the contiguous run below its window into
/// its archive and the rest into its log. [`ExecutedState::default`] is a replica that
/// executed nothing (or whose host keeps no application state): it catches up from peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutedState {
    /// The last seq whose execution is durable; the next delivery is `executed + 1`.
    pub executed: u64,
    /// The exactly-once table's floor: an unknown client's requests must be numbered above
    /// it (the highest request number of a client the table forgot).
    pub client_floor: u64,
    /// The exactly-once table's rows, in any order.
    pub clients: Vec<ClientRecord>,
    /// Committed batches with their QCs, in any order (those above `executed` are delivered
    /// again, like the log's [`Record::Committed`] ones).
    pub committed: Vec<Committed>,
    /// The states at checkpoints from the stable one up, as the host kept them (see
    /// [`Replica::checkpoint_state`]), so peers behind can fetch the stable state from this
    /// replica even when every replica restarted. One that does not match the checkpoint this
    /// replica signed (or the stable one) is ignored.
    pub checkpoints: Vec<CheckpointState>,
}

/// The state at one checkpoint, as a host keeps it durably: the application's snapshot and
/// the exactly-once table, exactly as the replica's checkpoint digest covers them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointState {
    /// The checkpoint's seq.
    pub seq: u64,
    /// The application's snapshot bytes there.
    pub app: Vec<u8>,
    /// The core's replicated state there (the exactly-once table and the validator set's
    /// part), in the replica's canonical encoding ([`crate::TakenSnapshot::core_state`]):
    /// opaque to hosts.
    pub core: Vec<u8>,
}

/// Notes an accepted batch at (seq, digest) from a record, in whatever order the records
/// come: the entry keeps the latest view's pre-prepare (a batch proposed again at its seq),
/// whichever record, an accepted one or a certificate's, carried it.
fn note_accepted(
    accepted: &mut BTreeMap<(u64, Digest), (Vote, Batch)>,
    proposal: &Vote,
    batch: impl FnOnce() -> Batch,
) {
    let entry = accepted.entry((proposal.seq, proposal.digest));
    let kept = entry.or_insert_with(|| (proposal.clone(), batch()));
    if kept.0.view < proposal.view {
        kept.0 = proposal.clone();
    }
}

impl Replica {
    /// A replica rebuilt from every record it persisted (in any order; repeats are fine) and
    /// from its host's application store as of `executed.executed`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] as [`Replica::new`]: an invalid config or a key not in the set.
    pub fn restore(
        config: Config,
        validators: ValidatorSet,
        keypair: Keypair,
        records: impl IntoIterator<Item = Record>,
        executed: ExecutedState,
    ) -> Result<Replica, ConfigError> {
        let records: Vec<Record> = records.into_iter().collect();
        // The epoch it last entered, and the chain of changes since genesis: records before
        // that entry are of older epochs, and only the final ones among them still count.
        let mut changes: Vec<EpochChange> = records
            .iter()
            .filter_map(|record| match record {
                Record::EpochStarted(change) => Some(change.clone()),
                _ => None,
            })
            .collect();
        changes.sort_by_key(EpochChange::epoch);
        changes.dedup_by_key(|change| change.epoch());
        let validators = match changes.last().filter(|c| c.epoch() > validators.epoch()) {
            Some(latest) => latest.validator_set().map_err(|_| {
                ConfigError::Invalid("an epoch change in the log names an invalid validator set")
            })?,
            None => validators,
        };
        let base = validators.base().0;
        if base > 0 && validators.id_of(&keypair.public_key()).is_none() {
            return Err(ConfigError::Removed {
                epoch: validators.epoch(),
            });
        }
        let mut replica = Replica::new(config, validators, keypair)?;
        if let Some(latest) = changes.last() {
            // The epoch's start, bare: its certificate is the previous epoch's, which this
            // epoch's set cannot check (the change in `epoch_changes` keeps it).
            replica.checkpoints.take(StableCheckpoint {
                seq: latest.checkpoint.seq,
                digest: latest.checkpoint.digest,
                signatures: Vec::new(),
            });
        }
        // Each ended epoch's set, checked once: evidence and QCs of those epochs name it.
        replica.epochs.sets = changes
            .iter()
            .enumerate()
            .filter_map(|(index, change)| match index.checked_sub(1) {
                None => ValidatorSet::new(change.state.epoch, &change.state.validators).ok(),
                Some(previous) => changes.get(previous)?.validator_set().ok(),
            })
            .collect();
        replica.epochs.changes = changes;
        let of_this_epoch =
            |replica: &Replica, record: &Record| base == 0 || replica.signed_in_epoch(record);
        let mut scheduled_at = None;
        let mut view_change_view = None;
        let mut in_view = 0;
        let mut redo = Vec::new();
        // The accepted pre-prepares with their batches, by (seq, digest).
        let mut accepted: BTreeMap<(u64, Digest), (Vote, Batch)> = BTreeMap::new();
        for record in records {
            if !of_this_epoch(&replica, &record) {
                // Of an older epoch: only the batches it carried still count, for the redo
                // records of the boundary's epoch (a store behind the boundary replays them).
                match &record {
                    Record::Accepted(proposal, batch) => {
                        note_accepted(&mut accepted, proposal, || batch.clone());
                    }
                    Record::Prepared(prepared, Some(batch)) => {
                        note_accepted(&mut accepted, &prepared.proposal, || batch.clone());
                    }
                    _ => {}
                }
                continue;
            }
            match record {
                Record::EpochStarted(_) => {}
                Record::Evidence(evidence) => replica.restore_evidence(evidence),
                Record::Fenced(fence, lost) => {
                    replica.signer.close(Some(fence));
                    lost.into_iter()
                        .for_each(|vote| replica.signer.remember_lost(vote));
                }
                Record::Scheduled { seq, next } => {
                    // The latest decision the store executed: a later one is made again when
                    // its batch is delivered again (the checkpoints before it must not see it).
                    let newer = scheduled_at.is_none_or(|at| at < seq);
                    if seq > base && seq <= executed.executed && newer {
                        scheduled_at = Some(seq);
                        replica.epochs.scheduled_at = seq;
                        replica.epochs.schedule = Some(next);
                    }
                }
                Record::Committed(certificate, batch) => redo.push((certificate, batch)),
                Record::Signed(_) if planted!(replica.config, RestoreWithoutSignedIndex) => {}
                Record::Signed(vote) => {
                    // A pre-prepare does not move the view either: one after view 0 is in a
                    // new view, whose record does.
                    if !matches!(vote.phase, Phase::Checkpoint | Phase::PrePrepare) {
                        in_view = in_view.max(vote.view);
                    }
                    replica.signer.remember(vote);
                }
                Record::Accepted(proposal, batch) => {
                    let own = proposal.replica == replica.id;
                    if own && !planted!(replica.config, RestoreWithoutSignedIndex) {
                        // Its own proposal. It does not move the view: a view after 0 is
                        // entered with its new view's record, and a re-proposal's batch is
                        // logged before that record, so a crash between the two leaves the
                        // replica changing to that view, not in it without its new view.
                        replica.signer.remember(proposal.clone());
                    }
                    note_accepted(&mut accepted, &proposal, || batch);
                }
                Record::Prepared(prepared, batch) => {
                    let view = prepared.proposal.view;
                    in_view = in_view.max(view);
                    let digest = prepared.proposal.digest;
                    // A batch logged only here (compaction writes no accepted record beside
                    // the certificate of the same digest) is an accepted batch too: a vote,
                    // a kept batch or a re-proposal may need it.
                    if let Some(batch) = &batch {
                        note_accepted(&mut accepted, &prepared.proposal, || batch.clone());
                    }
                    let slot = replica.log.entry(prepared.proposal.seq).or_default();
                    if slot
                        .prepared
                        .as_ref()
                        .is_none_or(|p| p.proposal.view < view)
                    {
                        slot.prepared = Some(prepared);
                    }
                    // The batch of the highest prepared certificate, for the view change that
                    // re-proposes it (its digest, checked once the slot's digest is settled).
                    if let Some(batch) = batch
                        && slot.prepared.as_ref().map(|p| p.proposal.digest) == Some(digest)
                    {
                        slot.batch = Some(batch);
                    }
                }
                Record::Stable(checkpoint) => {
                    replica.checkpoints.take(checkpoint);
                }
                Record::ViewChange(change) => {
                    if view_change_view.is_none_or(|v| v < change.view) {
                        view_change_view = Some(change.view);
                        let held = HeldViewChange {
                            change,
                            certified: true,
                        };
                        replica.view_changes.insert(replica.id, held);
                    }
                }
                Record::NewView(new_view) => {
                    in_view = in_view.max(new_view.view);
                    // As that view's primary it signed the re-proposals inside.
                    for proposal in new_view
                        .proposals
                        .iter()
                        .filter(|p| p.replica == replica.id)
                    {
                        replica.signer.remember(proposal.clone());
                    }
                    if replica
                        .new_view
                        .as_ref()
                        .is_none_or(|known| known.view < new_view.view)
                    {
                        replica.new_view = Some(new_view);
                    }
                }
            }
        }
        // The checkpoint the last new view started from: entering it made it stable, and
        // its own record may not have become durable before a crash.
        if let Some(entered) = &replica.new_view {
            let checkpoint = entered.checkpoint.clone();
            replica.checkpoints.take(checkpoint);
        }
        // The last view it entered, unless it signed a view change beyond it since.
        replica.view = in_view;
        if let Some(view) = view_change_view.filter(|&v| v > in_view) {
            replica.view = view;
            replica.mode = Mode::ViewChange { since: 0 };
        }
        replica.fill_prepared_batches(&accepted);
        // A redo record without its batch finds it in the accepted or prepared record that
        // carried it (the core leaves it out only while that record is in the log); one that
        // does not is left to peers, like any batch this replica lacks.
        let redo: Vec<Committed> = redo
            .into_iter()
            .filter_map(|(certificate, batch)| {
                let key = (certificate.seq, certificate.digest);
                let from_accepted = || accepted.get(&key).map(|(_, batch)| batch.clone());
                let batch = batch.or_else(from_accepted).or_else(|| {
                    let slot = replica.log.get(&certificate.seq)?;
                    let prepared = slot.prepared.as_ref()?;
                    (prepared.proposal.digest == certificate.digest)
                        .then(|| slot.batch.clone())
                        .flatten()
                })?;
                Some(Committed { batch, certificate })
            })
            .collect();
        let mut executed = executed;
        executed.committed.extend(redo);
        let checkpoint_states = replica.restore_executed(executed);
        let view = replica.view;
        let stable = replica.checkpoints.stable().seq;
        let low = replica.low;
        replica
            .log
            .retain(|&seq, slot| seq > low && (seq > stable || slot.certificate.is_some()));
        replica.check_prepared_batches();
        replica.forget_left_behind();
        replica.restore_voted_batches(&accepted);
        replica.signer.forget_through(stable);
        replica.signer.leave_views_below(view);
        replica.restore_checkpoint_votes();
        replica.restore_checkpoint_states(checkpoint_states);
        let reproposed = replica.restore_new_view(&accepted);
        // After the new view's proposals took their slots: a batch they displaced is kept.
        replica.restore_kept_batches(&accepted);
        // As primary, never propose again at a seq it proposed before the crash, nor at one
        // the new view it entered re-proposed.
        let proposed = replica.signer.highest_proposal(view);
        replica.next_seq = proposed
            .max(reproposed)
            .max(stable)
            .max(replica.last_delivered)
            + 1;
        // Batches the log committed past the store's executed seq go to the host again with
        // the first input, once the replica knows the time.
        Ok(replica)
    }

    /// Takes the host's application store: the exactly-once table, the executed seq (where
    /// deliveries resume and the window starts) and the committed batches, into the log above
    /// the low watermark and into the archive below it. Returns the checkpoint states, checked
    /// once the signed checkpoints are back.
    fn restore_executed(&mut self, state: ExecutedState) -> Vec<CheckpointState> {
        let ExecutedState {
            executed,
            client_floor,
            clients,
            mut committed,
            checkpoints,
        } = state;
        self.clients = ClientTable::from_records(self.config.max_clients, client_floor, clients);
        self.executed = executed;
        self.last_delivered = executed;
        // As `update_low` keeps it: the stable checkpoint, or the executed seq while behind.
        self.low = executed.min(self.checkpoints.stable().seq);
        let chain = self.config.chain_id;
        committed.retain(|c| c.certificate.seq > 0);
        committed.sort_by_key(|c| c.certificate.seq);
        committed.dedup_by_key(|c| c.certificate.seq);
        // The archive is indexed by seq: keep the contiguous run that ends at the window.
        let mut archive = Vec::new();
        for c in committed {
            let seq = c.certificate.seq;
            if seq > self.low {
                // The host's own store, checked for a torn or foreign entry: its digest must
                // be the QC's, or the slot stays unknown (and unsigned).
                if crate::merkle::root(&c.batch.leaves(&chain)) != c.certificate.digest {
                    continue;
                }
                let slot = self.log.entry(seq).or_default();
                slot.digest = Some(c.certificate.digest);
                slot.batch = Some(c.batch);
                slot.certificate = Some(c.certificate);
            } else {
                if archive
                    .last()
                    .is_some_and(|last: &Committed| last.certificate.seq + 1 != seq)
                {
                    archive.clear();
                }
                archive.push(c);
            }
        }
        // `committed_at` indexes the archive from its front: only a run that ends right at
        // the window serves the right batch for each seq.
        if archive
            .last()
            .is_some_and(|last| last.certificate.seq != self.low)
        {
            archive.clear();
        }
        let keep = archive.len().saturating_sub(self.config.retained_batches);
        self.archive = archive.into_iter().skip(keep).collect();
        checkpoints
    }

    /// What entering the last new view forgot and older records brought back: votes of
    /// earlier views for batches it did not re-propose (`Signer::forget_votes_left`), and
    /// above its last proposal the slots of earlier views, prepared certificates included
    /// (as `enter_view` drops them).
    fn forget_left_behind(&mut self) {
        let Some(entered) = &self.new_view else {
            return;
        };
        let view = entered.view;
        let max_s = entered
            .proposals
            .last()
            .map_or(entered.checkpoint.seq, |p| p.seq);
        let proposed = entered
            .proposals
            .iter()
            .map(|p| (p.seq, p.digest))
            .collect();
        self.signer.forget_votes_left(view, &proposed);
        for (_, slot) in self.log.range_mut(max_s.saturating_add(1)..) {
            let stale = slot
                .prepared
                .as_ref()
                .is_some_and(|p| p.proposal.view < view);
            if stale && slot.certificate.is_none() {
                *slot = Slot::default();
            }
        }
    }

    /// Puts back the batches that prepared records left out, from the accepted pre-prepares.
    fn fill_prepared_batches(&mut self, accepted: &BTreeMap<(u64, Digest), (Vote, Batch)>) {
        for (seq, slot) in self.log.iter_mut() {
            if slot.batch.is_none()
                && let Some(prepared) = &slot.prepared
            {
                let key = (*seq, prepared.proposal.digest);
                slot.batch = accepted.get(&key).map(|(_, batch)| batch.clone());
            }
        }
    }

    /// Puts back, with the accepted pre-prepare, the batch of this replica's latest vote at
    /// each seq that did not commit: a new view may re-propose it from the votes alone, and
    /// then needs someone to hold it. Where an older prepared certificate is for another
    /// batch from an earlier view, the latest vote's wins: that vote's new view took the
    /// certificate into account and proposed this batch.
    fn restore_voted_batches(&mut self, accepted: &BTreeMap<(u64, Digest), (Vote, Batch)>) {
        let chain = self.config.chain_id;
        let latest: Vec<(u64, u64, Digest)> = self
            .signer
            .latest_votes()
            .map(|vote| (vote.seq, vote.view, vote.digest))
            .collect();
        for (seq, view, digest) in latest {
            let Some((proposal, batch)) = accepted.get(&(seq, digest)) else {
                continue;
            };
            if seq <= self.checkpoints.stable().seq.max(self.executed) {
                continue;
            }
            let slot = self.log.entry(seq).or_default();
            // A prepared certificate from the vote's view or later (a repeat vote refused
            // after a restart) keeps its batch.
            let newer_certificate = slot
                .prepared
                .as_ref()
                .is_some_and(|p| p.proposal.digest != digest && p.proposal.view >= view);
            if slot.certificate.is_some() || newer_certificate {
                continue;
            }
            if slot.digest != Some(digest) || slot.batch.is_none() {
                let leaves = batch.leaves(&chain);
                if crate::merkle::root(&leaves) != digest {
                    continue;
                }
                slot.digest = Some(digest);
                slot.leaves = leaves;
                slot.batch = Some(batch.clone());
            }
            // The proposal keeps the batch in the log through the next compaction.
            slot.proposal.get_or_insert_with(|| proposal.clone());
            slot.batch_logged = true;
            // In the view it restores into, its own votes count again and are retransmitted.
            for phase in [Phase::Prepare, Phase::Commit] {
                if proposal.view == self.view
                    && let Some(vote) = self.signer.get(phase, proposal.view, seq)
                    && vote.digest == digest
                {
                    let _ = slot.add_vote(vote.clone());
                }
            }
        }
    }

    /// Keeps, at each seq above the checkpoint, the batch of the latest accepted pre-prepare
    /// the log does not hold: the batch of a vote whose slot a later view took over (a kept
    /// batch before the crash, or one the replica voted for). At most one per seq.
    fn restore_kept_batches(&mut self, accepted: &BTreeMap<(u64, Digest), (Vote, Batch)>) {
        let chain = self.config.chain_id;
        let floor = self.checkpoints.stable().seq.max(self.executed);
        // The latest view's accepted batch at each seq the log does not hold, then checked.
        let mut latest: BTreeMap<u64, (&Vote, &Batch)> = BTreeMap::new();
        let from = (floor.saturating_add(1), Digest([0; 32]));
        for ((seq, digest), (proposal, batch)) in accepted.range(from..) {
            let held = self
                .log
                .get(seq)
                .is_some_and(|slot| slot.digest == Some(*digest) && slot.batch.is_some());
            let newer = latest
                .get(seq)
                .is_none_or(|(kept, _)| kept.view < proposal.view);
            if !held && newer {
                latest.insert(*seq, (proposal, batch));
            }
        }
        for (seq, (proposal, batch)) in latest {
            if crate::merkle::root(&batch.leaves(&chain)) == proposal.digest {
                self.kept.insert(seq, (proposal.clone(), batch.clone()));
            }
        }
    }

    /// Keeps a batch restored with a prepared certificate only if it is the certified one; the
    /// slot then knows its digest and request digests, as after accepting the pre-prepare.
    fn check_prepared_batches(&mut self) {
        let chain = self.config.chain_id;
        for slot in self.log.values_mut() {
            if slot.certificate.is_some() {
                continue;
            }
            let Some(digest) = slot.prepared.as_ref().map(|p| p.proposal.digest) else {
                continue;
            };
            let Some(batch) = &slot.batch else {
                continue;
            };
            let leaves = batch.leaves(&chain);
            if crate::merkle::root(&leaves) == digest {
                slot.digest = Some(digest);
                slot.leaves = leaves;
                slot.batch_logged = true;
            } else {
                slot.batch = None;
            }
        }
    }

    /// Its own checkpoint votes above the stable checkpoint count again towards stability,
    /// and are retransmitted to peers that lack them.
    fn restore_checkpoint_votes(&mut self) {
        let stable = self.checkpoints.stable().seq;
        let own: Vec<Vote> = self
            .signer
            .votes()
            .filter(|vote| {
                vote.phase == Phase::Checkpoint && vote.seq > stable && vote.replica == self.id
            })
            .cloned()
            .collect();
        for vote in own {
            self.checkpoints.set_own(vote.seq, vote.digest);
            self.checkpoints.add_vote(vote);
        }
    }

    /// Takes back the checkpoint states the host kept whose digest is the stable checkpoint's
    /// or this replica's own signed one there, or, where it signed none (it crashed, or
    /// rollback protection withheld the vote, between the delivery and its vote), any at or
    /// below its executed seq: the store's own state there, which it signs on the first input
    /// (its store will not execute that seq again, so nothing else would).
    fn restore_checkpoint_states(&mut self, states: Vec<CheckpointState>) {
        let chain = self.config.chain_id;
        let stable = self.checkpoints.stable().clone();
        for state in states {
            let seq = state.seq;
            let expected = match seq == stable.seq {
                true => Some(stable.digest),
                false => self.checkpoints.own(seq),
            };
            let on_interval = seq.is_multiple_of(self.config.checkpoint_interval.max(1));
            if seq < stable.seq || seq > self.executed || !on_interval {
                continue;
            }
            let Some(core) = decode_core_state(&state.core) else {
                continue;
            };
            let snapshot = Snapshot::new(seq, state.app, core, self.config.snapshot_chunk_bytes);
            let digest = snapshot.manifest.digest(&chain);
            if expected.is_none_or(|expected| expected == digest) {
                self.checkpoints.set_own(seq, digest);
                self.checkpoints.keep_snapshot(seq, snapshot);
            }
        }
    }

    /// Installs the proposals of the new view that started the restored view, as entering
    /// it did: a later pre-prepare at a re-proposed seq must match them, and a null one is
    /// known as the empty batch it stands for. Its own prepares there count again. Returns the
    /// highest re-proposed seq (0 without one).
    fn restore_new_view(&mut self, accepted: &BTreeMap<(u64, Digest), (Vote, Batch)>) -> u64 {
        let Some(new_view) = self.new_view.clone().filter(|nv| nv.view == self.view) else {
            return 0;
        };
        if self.mode != Mode::Normal {
            return 0;
        }
        let chain = self.config.chain_id;
        let null = null_digest(&chain);
        let mut highest = 0;
        for proposal in &new_view.proposals {
            let seq = proposal.seq;
            highest = highest.max(seq);
            // Executed seqs and the log's committed ones keep their QC (a later view may have
            // committed them, which this view's proposal cannot undo).
            if seq <= self.low.max(self.executed)
                || self
                    .log
                    .get(&seq)
                    .is_some_and(|slot| slot.certificate.is_some())
            {
                continue;
            }
            // The null batch, or the proposal's batch if a record of this replica has it (and
            // it is whole: its root is the digest).
            let batch = match proposal.digest == null {
                true => Some(Batch::default()),
                false => accepted
                    .get(&(seq, proposal.digest))
                    .map(|(_, batch)| batch)
                    .filter(|batch| crate::merkle::root(&batch.leaves(&chain)) == proposal.digest)
                    .cloned(),
            };
            let slot = self.log.entry(seq).or_default();
            slot.repropose(&chain, proposal.clone(), batch);
            for phase in [Phase::Prepare, Phase::Commit] {
                if let Some(vote) = self.signer.get(phase, proposal.view, seq)
                    && vote.digest == proposal.digest
                {
                    let _ = slot.add_vote(vote.clone());
                }
            }
        }
        highest
    }
}
