//! What a host, a test or an operator reads of a replica: its position, its counters and
//! how much it holds against the bound its config sets.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::restore::CheckpointState;
use super::slot::Slot;
use super::{Mode, Replica};
use crate::config::{Config, ReplicaId, ValidatorSet};
use crate::metrics::Metrics;
use crate::view_change::StableCheckpoint;

impl core::fmt::Debug for Replica {
    /// The replica's position, for logs and failing tests: view, watermarks and the state of
    /// each slot in the log (proposal view, flags as in a status).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let quorum = self.validators.quorum();
        let slots: Vec<(u64, Option<u64>, u8)> = self
            .log
            .iter()
            .map(|(&seq, slot)| {
                (
                    seq,
                    slot.proposal.as_ref().map(|p| p.view),
                    slot.flags(quorum),
                )
            })
            .collect();
        let changes: Vec<(u16, u64)> = self
            .view_changes
            .iter()
            .map(|(id, held)| (id.0, held.change.view))
            .collect();
        f.debug_struct("Replica")
            .field("id", &self.id.0)
            .field("view", &self.view)
            .field("mode", &self.mode)
            .field("low", &self.low)
            .field("stable", &self.checkpoints.stable().seq)
            .field("executed", &self.executed)
            .field("delivered", &self.last_delivered)
            .field("next_seq", &self.next_seq)
            .field("slots", &slots)
            .field("pending", &self.intake.pending_len())
            .field("watched", &self.intake.watched_len())
            .field("view_changes", &changes)
            .field("failed_views", &self.timers.failed_views())
            .field(
                "snapshots",
                &self.checkpoints.snapshot_seqs().collect::<Vec<_>>(),
            )
            .field(
                "transfer",
                &self
                    .transfer
                    .as_ref()
                    .map(super::transfer::Transfer::target_seq),
            )
            .finish()
    }
}

impl Replica {
    /// The config the replica runs with (chain id and limits).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This replica's id in its epoch's set.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The validator set of this replica's epoch ([`ValidatorSet::epoch`]): ids in outputs
    /// are positions in it.
    pub fn validators(&self) -> &ValidatorSet {
        &self.validators
    }

    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether this replica is the primary of the current view.
    pub fn is_primary(&self) -> bool {
        self.validators.primary(self.view) == self.id
    }

    /// Whether the replica runs its view (false while it waits for a new view).
    pub fn in_view(&self) -> bool {
        self.mode == Mode::Normal
    }

    /// The low watermark: every seq up to it is executed and its slot freed.
    pub fn low_watermark(&self) -> u64 {
        self.low
    }

    /// The highest stable checkpoint this replica knows.
    pub fn stable_checkpoint(&self) -> &StableCheckpoint {
        self.checkpoints.stable()
    }

    /// The highest seq the host reported executed.
    pub fn executed_seq(&self) -> u64 {
        self.executed
    }

    /// Whether this replica holds the state at checkpoint `seq` ([`Replica::checkpoint_state`]
    /// without the copy).
    pub fn holds_checkpoint_state(&self, seq: u64) -> bool {
        self.checkpoints.snapshot(seq).is_some()
    }

    /// The state this replica holds at checkpoint `seq` (its own after executing there, or
    /// one it installed), for the host to keep durably beside its application (see
    /// [`ExecutedState::checkpoints`]): after a restart the replica can still serve it.
    pub fn checkpoint_state(&self, seq: u64) -> Option<CheckpointState> {
        let snapshot = self.checkpoints.snapshot(seq)?;
        Some(CheckpointState {
            seq,
            app: snapshot.app.clone(),
            core: crate::state::encode_core_state(
                &snapshot.manifest.clients,
                &snapshot.manifest.epoch,
            ),
        })
    }

    /// Whether nothing is in flight: no undelivered slot, no request waiting, no view change
    /// and no checkpoint of its own waiting to become stable. Only heartbeats remain.
    pub fn is_idle(&self) -> bool {
        !self.has_work()
    }

    /// Counters for the host's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Entries held for the network (slots, votes, archived batches, buffered, pending and
    /// watched messages, view changes, checkpoint votes, signed votes, snapshots, refused
    /// proposals, remembered clients), to check that memory stays within the config's bounds.
    pub fn memory_footprint(&self) -> usize {
        self.log.len()
            + self.log.values().map(Slot::vote_count).sum::<usize>()
            + self.archive.len()
            + self.ahead.values().map(VecDeque::len).sum::<usize>()
            + self.intake.footprint()
            + self.clients.len()
            + self.view_changes.len()
            + self.checkpoints.footprint()
            + self.signer.len()
            + self.kept.len()
            + self.evidence.refused_len()
    }

    /// The most entries [`Replica::memory_footprint`] may count under this replica's config,
    /// however long it runs and whatever its peers send: two windows of slots with two votes
    /// per validator each (the window, and as far again while catching up), the archive,
    /// per-peer buffers, pending and watched requests with their index entries, one view
    /// change per validator, checkpoint votes and reports, own checkpoints and snapshots (held,
    /// or awaited from the host with the quorum's digest kept for each) for every checkpoint
    /// in reach, the votes it signed (three phases per slot), a kept batch per
    /// seq of the window, two refused proposals per seq of it, and the client table.
    pub fn memory_bound(&self) -> usize {
        let config = &self.config;
        let n = self.validators.len();
        let window = config.window as usize;
        let checkpoints = 2 * window / config.checkpoint_interval as usize + 1;
        2 * window * (1 + 2 * n)
            + config.retained_batches
            + n * config.max_future_per_peer
            + 3 * config.max_pending_requests
            + 2 * window * config.max_batch_ops
            + n
            + checkpoints * (2 * n + 4)
            + 3 * 2 * window
            + window
            + 2 * window
            + config.max_clients
    }
}
