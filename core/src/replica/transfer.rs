//! State transfer: a replica more than a window behind the stable checkpoint fetches that
//! checkpoint's state instead of replaying batches its peers no longer keep.
//!
//! It asks one peer at a time for the manifest and then for the chunks it lacks, a round of a
//! few at a time, and moves to the next peer when a round is not complete within a retransmit
//! interval or at once when a peer sends something that does not verify — so a Byzantine peer
//! (silent, corrupting, or drip-feeding valid chunks) can slow it by an interval, never
//! corrupt it or stall it. Served chunks are budgeted per peer and interval.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::Replica;
use super::exactly_once::{ClientTable, Freshness};
use super::output::{Destination, Install, Output, Record};
use crate::config::ReplicaId;
use crate::error::Error;
use crate::message::Message;
use crate::state::{FetchState, Manifest, Snapshot, StateChunk, chunk_matches};
use crate::view_change::StableCheckpoint;

/// Chunks asked of one peer at a time, and served to one peer per interval.
const CHUNKS_IN_FLIGHT: u32 = 8;

/// A state being fetched.
pub(super) struct Transfer {
    /// The stable checkpoint whose state is fetched; its digest checks the manifest.
    target: StableCheckpoint,
    manifest: Option<Manifest>,
    chunks: Vec<Option<Vec<u8>>>,
    /// Index into the other validators of the peer asked now.
    cursor: usize,
    /// Peers that sent something that did not verify, skipped while others remain.
    bad: BTreeSet<ReplicaId>,
    /// Chunks asked for in the last request and not yet received.
    requested: usize,
    /// Every peer failed a round since the transfer started or last made progress: its
    /// target may be a state no peer serves any more.
    exhausted: bool,
    /// When each peer was last asked for a round (ms): a peer serves one round per interval
    /// (its budget, [`CHUNKS_IN_FLIGHT`]), so it is not asked sooner.
    asked: BTreeMap<ReplicaId, u64>,
    /// This replica's own state diverged from a stable checkpoint's: the transfer replaces
    /// it even though the replica is not behind, and nothing is delivered until it is done.
    repair: bool,
}

impl Transfer {
    /// Whether `peer` was asked for this state and has not failed since: only its answers
    /// count, so a peer nobody asked cannot make the fetcher drop a good one.
    fn serves(&self, peer: ReplicaId) -> bool {
        self.asked.contains_key(&peer) && !self.bad.contains(&peer)
    }

    /// The checkpoint being fetched.
    pub(super) fn target_seq(&self) -> u64 {
        self.target.seq
    }

    /// Whether it replaces a state that diverged (see [`Replica::check_diverged`]).
    pub(super) fn repairs(&self) -> bool {
        self.repair
    }
}

impl Replica {
    /// Starts fetching the stable checkpoint's state if this replica is more than a window
    /// behind it (peers keep only a window of batches below their checkpoint for replay), or
    /// moves a transfer under way to a newer stable checkpoint once every peer failed it
    /// (peers keep an older state while it is fetched, so under load a transfer goes on
    /// rather than restart at every new stable checkpoint and never finish); a repair moves
    /// the same way, whether behind or not. Returns whether it sent requests.
    pub(super) fn maybe_start_transfer(&mut self) -> bool {
        let stable = self.checkpoints.stable();
        // Or behind the end of its epoch, which a peer proved, with replay stalled for an
        // interval: the next epoch's replicas keep the state there, not always the batches.
        let stalled = self.timers.idle_for(self.config.retransmit_ms);
        // Or below its own epoch's start (a validator that joined), whose batches are of an
        // epoch its peers need not keep.
        let below_start = self.executed < self.validators.base().0;
        let behind = stable.seq.saturating_sub(self.executed) > self.config.window
            || ((!self.epochs.ahead.is_empty() || below_start)
                && stable.seq > self.executed
                && stalled);
        let repair = self.repairing();
        let newer = self
            .transfer
            .as_ref()
            .is_none_or(|t| t.target.seq < stable.seq && t.exhausted);
        if !(behind || repair) || !newer {
            return false;
        }
        self.fetch_stable_state(repair);
        true
    }

    /// Fetches the stable checkpoint's state because this replica's own state there diverged
    /// (see [`Replica::check_diverged`]).
    pub(super) fn start_repair(&mut self) {
        self.fetch_stable_state(true);
    }

    /// Whether this replica's state diverged and is being replaced: it delivers nothing until
    /// the install.
    pub(super) fn repairing(&self) -> bool {
        self.transfer.as_ref().is_some_and(Transfer::repairs)
    }

    /// Starts fetching the stable checkpoint's state from the first peer after this replica.
    pub(super) fn fetch_stable_state(&mut self, repair: bool) {
        self.transfer = Some(Transfer {
            target: self.checkpoints.stable().clone(),
            manifest: None,
            chunks: Vec::new(),
            cursor: usize::from(self.id.0),
            bad: BTreeSet::new(),
            requested: 0,
            exhausted: false,
            asked: BTreeMap::new(),
            repair,
        });
        self.request_state(false);
    }

    /// `peer`, which was asked, sent something that does not verify: it is skipped while
    /// others remain, and if it holds the current round the round goes to another peer now.
    fn blame(&mut self, peer: ReplicaId) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.bad.insert(peer);
        if usize::from(peer.0) == transfer.cursor {
            self.request_state(true);
        }
    }

    /// Asks a peer for what is missing: the current one, or with `next` (an interval passed
    /// without a complete round) another. A peer whose round is still incomplete then is
    /// slow: like one that sent something invalid, it is skipped while others remain. A peer
    /// is asked at most one round per interval, as it serves; if every usable peer was asked
    /// within the interval, the next timeout asks again.
    pub(super) fn request_state(&mut self, next: bool) {
        let n = self.validators.len();
        let id = self.id;
        let now = self.timers.now();
        let interval = self.config.retransmit_ms;
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if next && transfer.requested > 0 {
            transfer.bad.insert(ReplicaId(transfer.cursor as u16));
        }
        if transfer.bad.len() + 1 >= n {
            // Everyone failed once: give them all another chance, or a newer target.
            transfer.bad.clear();
            transfer.exhausted = true;
        }
        let rested = |peer: &ReplicaId| {
            transfer
                .asked
                .get(peer)
                .is_none_or(|&at| now >= at.saturating_add(interval))
        };
        let chosen = (0..n)
            .map(|step| (transfer.cursor + usize::from(next) + step) % n)
            .find(|&cursor| {
                let peer = ReplicaId(cursor as u16);
                peer != id && !transfer.bad.contains(&peer) && rested(&peer)
            });
        let Some(cursor) = chosen else {
            return;
        };
        transfer.cursor = cursor;
        let peer = ReplicaId(cursor as u16);
        transfer.asked.insert(peer, now);
        let seq = transfer.target.seq;
        let wanted: Vec<Option<u32>> = match &transfer.manifest {
            None => alloc::vec![None],
            Some(_) => transfer
                .chunks
                .iter()
                .enumerate()
                .filter(|(_, chunk)| chunk.is_none())
                .take(CHUNKS_IN_FLIGHT as usize)
                .map(|(index, _)| Some(index as u32))
                .collect(),
        };
        transfer.requested = wanted.len();
        for chunk in wanted {
            let bytes = Message::FetchState(FetchState { seq, chunk }).encode();
            self.send(Destination::Validator(peer), bytes);
        }
    }

    /// Serves the manifest or a chunk of a checkpoint this replica holds, within the
    /// peer's budget for the interval.
    pub(super) fn on_fetch_state(
        &mut self,
        peer: ReplicaId,
        fetch: FetchState,
    ) -> Result<(), Error> {
        let now = self.timers.now();
        if self.checkpoints.snapshot(fetch.seq).is_none() {
            return Err(Error::UnexpectedMessage("fetch for a state not held"));
        }
        let interval = self.config.retransmit_ms;
        let budget = self.chunks_served.entry(peer).or_insert((now, 0));
        if now >= budget.0.saturating_add(interval) {
            *budget = (now, 0);
        }
        if budget.1 >= CHUNKS_IN_FLIGHT {
            return Err(Error::RateLimited);
        }
        budget.1 += 1;
        self.checkpoints.pin(peer, fetch.seq, now);
        let Some(snapshot) = self.checkpoints.snapshot(fetch.seq) else {
            return Err(Error::UnexpectedMessage("fetch for a state not held"));
        };
        let message = match fetch.chunk {
            None => Message::StateManifest(snapshot.manifest.clone()),
            Some(index) => Message::StateChunk(
                snapshot
                    .chunk(index)
                    .ok_or(Error::UnexpectedMessage("fetch for a chunk out of range"))?,
            ),
        };
        self.metrics.retransmitted += 1;
        let to = self.answer_to(peer);
        self.send(to, message.encode());
        Ok(())
    }

    pub(super) fn on_manifest(&mut self, peer: ReplicaId, manifest: Manifest) -> Result<(), Error> {
        let chain = self.config.chain_id;
        let max = self.config.max_snapshot_bytes;
        let Some(transfer) = self.transfer.as_mut() else {
            return Err(Error::UnexpectedMessage(
                "state manifest while not fetching",
            ));
        };
        if transfer.manifest.is_some() || manifest.seq != transfer.target.seq {
            return Err(Error::Duplicate);
        }
        if !transfer.serves(peer) {
            return Err(Error::UnexpectedMessage(
                "state manifest from a peer not asked",
            ));
        }
        let valid = manifest.digest(&chain) == transfer.target.digest
            && manifest.app_len <= max
            && manifest.chunk_bytes > 0;
        if !valid {
            self.blame(peer);
            return Err(Error::UnexpectedMessage(
                "state manifest does not match the checkpoint",
            ));
        }
        transfer.chunks = alloc::vec![None; manifest.chunks() as usize];
        transfer.manifest = Some(manifest);
        transfer.exhausted = false;
        self.timers.progress();
        self.finish_transfer_or_ask();
        Ok(())
    }

    pub(super) fn on_chunk(&mut self, peer: ReplicaId, chunk: StateChunk) -> Result<(), Error> {
        let Some(transfer) = self.transfer.as_mut() else {
            return Err(Error::UnexpectedMessage("state chunk while not fetching"));
        };
        let Some(manifest) = &transfer.manifest else {
            return Err(Error::UnexpectedMessage("state chunk before its manifest"));
        };
        let index = chunk.index as usize;
        if chunk.seq != manifest.seq || transfer.chunks.get(index).is_some_and(Option::is_some) {
            return Err(Error::Duplicate);
        }
        if !transfer.serves(peer) {
            return Err(Error::UnexpectedMessage(
                "state chunk from a peer not asked",
            ));
        }
        if !chunk_matches(manifest, &chunk) {
            self.blame(peer);
            return Err(Error::UnexpectedMessage(
                "state chunk does not match the manifest",
            ));
        }
        if let Some(slot) = transfer.chunks.get_mut(index) {
            *slot = Some(chunk.bytes);
        }
        // Once the last request's chunks are all in, install or ask for the next ones. Only a
        // whole round counts as progress: a peer that drip-feeds one chunk per interval
        // looks alive chunk by chunk, and must lose its turn after one interval like a
        // silent one.
        transfer.requested = transfer.requested.saturating_sub(1);
        if transfer.requested == 0 {
            transfer.exhausted = false;
            self.timers.progress();
            self.finish_transfer_or_ask();
        }
        Ok(())
    }

    /// Installs the state if every chunk is in, or asks the same peer for more.
    fn finish_transfer_or_ask(&mut self) {
        let complete = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.manifest.is_some() && t.chunks.iter().all(Option::is_some));
        if !complete {
            self.request_state(false);
            return;
        }
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        let Some(manifest) = transfer.manifest else {
            return;
        };
        let app: Vec<u8> = transfer.chunks.into_iter().flatten().flatten().collect();
        let Some(clients) = ClientTable::import(&manifest.clients, self.config.max_clients) else {
            // The quorum signed this table, so it decodes unless the limits differ. A diverged
            // state stays unused: the repair starts over (and moves to a newer checkpoint).
            self.metrics.checkpoint_mismatches += 1;
            if transfer.repair {
                self.start_repair();
            }
            return;
        };
        self.install(manifest, app, clients, transfer.target);
    }

    /// Replaces this replica's executed state with the checkpoint's.
    fn install(
        &mut self,
        manifest: Manifest,
        app: Vec<u8>,
        clients: ClientTable,
        checkpoint: StableCheckpoint,
    ) {
        let seq = manifest.seq;
        self.metrics.state_transfers += 1;
        if !planted!(self.config, InstallKeepsClientTable) {
            self.clients = clients;
        }
        self.executed = seq;
        // Deliveries not executed yet are void, those above `seq` too: their exactly-once
        // decisions were made against the replaced table. They are delivered again below.
        self.last_delivered = seq;
        // The installed state's validator set part: a change scheduled before it. Its record
        // goes first: a host may make the installed store durable before later records.
        if manifest.epoch.epoch == self.validators.epoch() {
            self.epochs.schedule = manifest.epoch.next.clone();
            self.epochs.scheduled_at = seq;
            if let Some(next) = &self.epochs.schedule {
                self.evidence
                    .retain_pending(|offender| next.validators.contains(offender));
                self.outbox.persist(Record::Scheduled {
                    seq,
                    next: next.clone(),
                });
            }
        }
        // A jump's state is of a later epoch: the changes that lead there and the checkpoint
        // go first, or a restart from the installed store would not know its epoch.
        if manifest.epoch.epoch != self.validators.epoch() {
            for change in self.epochs.ahead.clone() {
                self.outbox.persist(Record::EpochStarted(change));
            }
            self.outbox.persist(Record::Stable(checkpoint.clone()));
        }
        self.outbox.push(Output::Install(Install {
            seq,
            snapshot: app.clone(),
            clients: self.clients.records(),
            client_floor: self.clients.floor(),
        }));
        // Snapshots still being taken were of the state this one replaces.
        self.checkpoints.cancel_deferred();
        let chunk_bytes = manifest.chunk_bytes;
        let snapshot = Snapshot::new(seq, app, (manifest.clients, manifest.epoch), chunk_bytes);
        self.checkpoints
            .set_own(seq, snapshot.manifest.digest(&self.config.chain_id));
        self.checkpoints.keep_snapshot(seq, snapshot);
        self.log.retain(|&slot, _| slot > seq);
        // Batches below the installed state are no longer a run ending at the window.
        self.archive.clear();
        self.intake.clear_in_flight();
        // A primary keeps its pending requests across the install, but those the installed
        // state executed already: the rest stay in flight, so a retransmitted copy is refused.
        let clients = &self.clients;
        self.intake
            .retain_pending(|r| clients.freshness(&r.client, r.client_seq) == Freshness::Fresh);
        self.intake.track_pending();
        let executed = self.executed;
        let chain = self.config.chain_id;
        for (_, slot) in self.log.range_mut(executed + 1..) {
            if slot.leaves.is_empty()
                && let Some(batch) = &slot.batch
            {
                // Executed on the state this one replaces (a repair): delivered again.
                slot.leaves = batch.leaves(&chain);
            }
            self.intake.track_all(&slot.leaves);
        }
        self.take_checkpoint(checkpoint);
        self.update_low();
        self.timers.progress();
        if !self.is_primary() {
            self.evidence.forget_pending();
        }
        self.deliver_ready();
    }
}
