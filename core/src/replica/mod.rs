//! The validator: a sans-IO PBFT state machine.
//!
//! Feed it with [`Replica::handle_message`], [`Replica::submit`], [`Replica::handle_timeout`] and
//! [`Replica::executed`]; drain [`Replica::poll_output`] after each call and obey the order of
//! what comes out. It never reads a clock, does I/O or draws randomness.
//!
//! This module holds the normal case (requests, batching, the three phases, delivery);
//! `view_change` replaces a faulty primary and `recovery` holds checkpoints and the
//! retransmission that repairs lost messages.

mod recovery;
mod restore;
mod transfer;
mod view_change;

pub use restore::{CheckpointState, ExecutedState};

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use crate::certificate::{Evidence, QuorumCertificate};
use crate::clients::{ClientRecord, ClientTable, Freshness};
use crate::config::{Config, ConfigError, ReplicaId, ValidatorSet};
use crate::crypto::{BatchVerifier, Digest, Keypair, PublicKey};
use crate::error::Error;
use crate::log::{Slot, VoteOutcome};
use crate::merkle;
use crate::message::{
    Batch, Committed, Message, Phase, PrePrepare, Reply, Request, Vote, reply_leaf,
    reply_root_digest,
};
use crate::metrics::Metrics;
use crate::state::Snapshot;
use crate::view_change::{NewView, Prepared, StableCheckpoint, ViewChange};

/// Where the host must send bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One validator.
    Validator(ReplicaId),
    /// Every validator but this one.
    AllValidators,
    /// A client (or the gateway that speaks for it), by key.
    Client(PublicKey),
}

/// A record the host must make durable; [`Record::encode`] gives the bytes to store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Record {
    /// A vote this replica signed. After a restart the replica must never sign a different
    /// digest for the same phase and slot.
    Signed(Vote),
    /// A prepared certificate this replica assembled, as it sends its commit, with the batch
    /// when this replica holds it: a view change after a restart must still carry the
    /// certificate, or a batch committed elsewhere could be lost, and when every validator
    /// restarts at once the batch is known only from these records (Castro and Liskov log the
    /// pre-prepare with its requests for the same reason).
    Prepared(Prepared, Option<Batch>),
    /// A checkpoint that became stable: everything at or below it is final. A host may
    /// compact its log to [`Replica::durable_records`] when it sees one.
    Stable(StableCheckpoint),
    /// A view change this replica signed: it left every view below `view`.
    ViewChange(ViewChange),
    /// The new view this replica entered (signed by it if it is that view's primary).
    NewView(NewView),
    /// A QC, persisted just before its batch is delivered: the redo record of the batch's
    /// execution. The batch is carried only when no `Prepared` record before it carried it
    /// (restore finds it there). A host that commits its application store lazily (not
    /// durably every round) relies on it: [`Replica::restore`] delivers again every such
    /// batch above the store's executed seq, so a reply may leave once this record is
    /// durable. Such a host must make its store durable before it compacts its log to
    /// [`Replica::durable_records`] (which leaves these out).
    Committed(QuorumCertificate, Option<Batch>),
}

impl Record {
    /// The record's bytes for the host's log: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(crate::message::PROTOCOL_VERSION);
        // Serialising into a Vec fails only on allocation failure, which aborts anyway.
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Reads a record written by [`Record::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Record, crate::message::DecodeError> {
        use crate::message::DecodeError;
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != crate::message::PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (record, rest) =
            postcard::take_from_bytes::<Record>(body).map_err(|_| DecodeError::Malformed)?;
        match rest.is_empty() {
            true => Ok(record),
            false => Err(DecodeError::TrailingBytes(rest.len())),
        }
    }
}

/// A committed batch, handed to the host for execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The sequence number; deliveries come in strictly increasing order without gaps.
    pub seq: u64,
    /// The whole batch, as certified.
    pub batch: Batch,
    /// The quorum certificate over the batch digest.
    pub certificate: QuorumCertificate,
    /// Indices into `batch.requests` of the requests to execute, in order; the others
    /// already executed (exactly-once) and must be skipped.
    pub execute: Vec<u32>,
    /// A checkpoint seq: pass a snapshot of the application state after this batch to
    /// [`Replica::executed`].
    pub checkpoint: bool,
    /// Clients the exactly-once table forgot to stay within `max_clients` when this batch's
    /// requests were recorded: a host that persists the table writes the rows of the executed
    /// requests first, then deletes these.
    pub forgotten: Vec<PublicKey>,
    /// The table's floor after this batch (see [`ExecutedState::client_floor`]).
    pub client_floor: u64,
}

/// An application snapshot fetched from peers, to replace the host's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// The checkpoint the snapshot is the state at; deliveries continue after it.
    pub seq: u64,
    /// The application's snapshot bytes, as its own `executed` snapshot produced them.
    pub snapshot: Vec<u8>,
    /// The exactly-once table as of `seq`, which replaces the one the host persisted.
    pub clients: Vec<ClientRecord>,
    /// The table's floor as of `seq`.
    pub client_floor: u64,
}

/// What the replica asks of its host. Drain with [`Replica::poll_output`] and act in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Make the record durable (fsync). It must be durable before any `Send` that comes
    /// after it in the output order goes on the wire: that `Send` carries its signature, and
    /// a replica that restarts without the record could sign a conflicting vote.
    Persist(Record),
    /// Send the encoded message. Best effort: the protocol tolerates loss.
    Send {
        /// Who receives it.
        to: Destination,
        /// An encoded [`Message`].
        bytes: Vec<u8>,
    },
    /// Execute the batch's `execute` requests in order, then call [`Replica::executed`] with
    /// their results. Deliveries come in sequence order, each after `executed` for the one
    /// before. A host that keeps its application across crashes writes, atomically with the
    /// application's changes, what [`ExecutedState`] lists (the exactly-once rows, `forgotten`,
    /// `client_floor`, the seq, the batch with its QC), durable after the records before it;
    /// the `Send`s after it (they carry the replies) may leave once the `Persist` of the
    /// [`Record::Committed`] redo record just before it is durable. A delivery whose `seq` is not
    /// [`Replica::executed_seq`] + 1 when the host reaches it was voided by an install: skip it.
    Deliver(Delivery),
    /// A validator signed two conflicting votes; the evidence verifies offline with
    /// [`crate::verify_evidence`]. Forward it to whatever decides on punishment.
    Evidence(Evidence),
    /// This replica was too far behind to replay batches and fetched a checkpoint's state:
    /// replace the application's state with the snapshot, and the persisted exactly-once table
    /// and executed seq with the install's (in the same atomic write). Every delivery the host
    /// has not executed yet is void; the next delivery is `seq + 1`.
    Install(Install),
}

/// Whether the replica runs its view or waits for the view's `NewView`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Sent a view change for `view`; `since` is when the change began (the first view
    /// change of a run of failed views).
    ViewChange {
        since: u64,
    },
}

/// A client request a backup holds while it waits for the primary to order it.
struct Watched {
    request: Request,
    /// When the backup gives up on the primary if the request has not committed.
    deadline: u64,
}

/// A validator replica.
pub struct Replica {
    config: Config,
    validators: ValidatorSet,
    keypair: Keypair,
    id: ReplicaId,
    /// The time of the input being handled.
    now: u64,
    view: u64,
    mode: Mode,
    /// The low watermark: the window is (low, low + window]; slots at or below are freed.
    /// It is the stable checkpoint, or the executed seq while catching up to one.
    low: u64,
    /// The highest stable checkpoint known.
    stable: StableCheckpoint,
    /// The highest seq the host executed.
    executed: u64,
    /// The highest seq handed to the host.
    last_delivered: u64,
    /// The primary's next seq to propose.
    next_seq: u64,
    log: BTreeMap<u64, Slot>,
    /// Committed batches below the window, oldest first, to serve peers that are behind.
    archive: VecDeque<Committed>,
    /// Request digests in a proposal of the log, or pending at the primary.
    in_flight: BTreeSet<Digest>,
    pending: VecDeque<Request>,
    batch_deadline: Option<u64>,
    clients: ClientTable,
    /// Messages from each peer for seqs above the window, replayed when it moves.
    ahead: BTreeMap<PublicKey, VecDeque<Message>>,
    outputs: VecDeque<Output>,
    metrics: Metrics,
    /// Checkpoint votes above the stable checkpoint, by seq and signer.
    checkpoint_votes: BTreeMap<u64, BTreeMap<ReplicaId, Vote>>,
    /// (seq, validator) already reported for signing two checkpoints at seq.
    checkpoint_reported: BTreeSet<(u64, ReplicaId)>,
    /// This replica's state digests at checkpoint seqs above the stable checkpoint.
    own_checkpoints: BTreeMap<u64, Digest>,
    /// Each validator's latest verified view change.
    view_changes: BTreeMap<ReplicaId, ViewChange>,
    /// The new view that started the current view, for peers still behind.
    new_view: Option<NewView>,
    /// Requests clients sent to this backup, by digest: each must commit before its deadline.
    watched: BTreeMap<Digest, Watched>,
    /// Views in a row that failed to make progress; doubles the timeout.
    failed_views: u32,
    /// Since when an accepted proposal has waited to commit, with no delivery since.
    waiting_since: Option<u64>,
    /// While changing view: when to give up on the new primary (armed once a quorum asked).
    new_view_deadline: Option<u64>,
    /// The last delivery (or view start): retransmission starts when it is old.
    progress_at: u64,
    /// When this replica last sent a status; set by the first input (the replica learns the
    /// time only from its inputs), which arms the status timer.
    last_status: Option<u64>,
    /// When each peer was last served retransmissions.
    served: BTreeMap<ReplicaId, u64>,
    /// Every vote this replica signed in the current view (and its checkpoints) above the
    /// low watermark, by (phase, view, seq). Restored after a crash, it keeps the replica
    /// from ever signing a second digest for one statement.
    signed: BTreeMap<(Phase, u64, u64), Vote>,
    /// The state at checkpoints from the stable one up, to serve peers that fetch it.
    snapshots: BTreeMap<u64, Snapshot>,
    /// The state this replica is fetching, when it is too far behind to replay.
    transfer: Option<transfer::Transfer>,
    /// State chunks served to each peer in the current retransmit interval.
    chunks_served: BTreeMap<ReplicaId, (u64, u32)>,
    /// Checkpoint states handed to `restore`, until it checked them.
    pending_checkpoints: Vec<CheckpointState>,
}

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
            .map(|(id, change)| (id.0, change.view))
            .collect();
        f.debug_struct("Replica")
            .field("id", &self.id.0)
            .field("view", &self.view)
            .field("mode", &self.mode)
            .field("low", &self.low)
            .field("stable", &self.stable.seq)
            .field("executed", &self.executed)
            .field("delivered", &self.last_delivered)
            .field("next_seq", &self.next_seq)
            .field("slots", &slots)
            .field("pending", &self.pending.len())
            .field("watched", &self.watched.len())
            .field("view_changes", &changes)
            .field("failed_views", &self.failed_views)
            .field("snapshots", &self.snapshots.keys().collect::<Vec<_>>())
            .field(
                "transfer",
                &self.transfer.as_ref().map(transfer::Transfer::target_seq),
            )
            .finish()
    }
}

impl Replica {
    /// A validator with `keypair`, which must be in `validators`, starting from genesis.
    pub fn new(
        config: Config,
        validators: ValidatorSet,
        keypair: Keypair,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let id = validators
            .id_of(&keypair.public_key())
            .ok_or(ConfigError::Invalid(
                "this replica's key is not in the validator set",
            ))?;
        Ok(Replica {
            clients: ClientTable::new(config.max_clients),
            config,
            validators,
            keypair,
            id,
            now: 0,
            view: 0,
            mode: Mode::Normal,
            low: 0,
            stable: StableCheckpoint::genesis(),
            executed: 0,
            last_delivered: 0,
            next_seq: 1,
            log: BTreeMap::new(),
            archive: VecDeque::new(),
            in_flight: BTreeSet::new(),
            pending: VecDeque::new(),
            batch_deadline: None,
            ahead: BTreeMap::new(),
            outputs: VecDeque::new(),
            metrics: Metrics::default(),
            checkpoint_votes: BTreeMap::new(),
            checkpoint_reported: BTreeSet::new(),
            own_checkpoints: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            new_view: None,
            watched: BTreeMap::new(),
            failed_views: 0,
            waiting_since: None,
            new_view_deadline: None,
            progress_at: 0,
            last_status: None,
            served: BTreeMap::new(),
            signed: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            transfer: None,
            chunks_served: BTreeMap::new(),
            pending_checkpoints: Vec::new(),
        })
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
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
        &self.stable
    }

    /// The highest seq the host reported executed.
    pub fn executed_seq(&self) -> u64 {
        self.executed
    }

    /// The state this replica holds at checkpoint `seq` (its own after executing there, or
    /// one it installed), for the host to keep durably beside its application (see
    /// [`ExecutedState::checkpoints`]): after a restart the replica can still serve it.
    pub fn checkpoint_state(&self, seq: u64) -> Option<CheckpointState> {
        let snapshot = self.snapshots.get(&seq)?;
        Some(CheckpointState {
            seq,
            app: snapshot.app.clone(),
            clients: snapshot.manifest.clients.clone(),
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
    /// watched messages, view changes, checkpoint votes, signed votes, snapshots, remembered
    /// clients), to check that memory stays within the config's bounds.
    pub fn memory_footprint(&self) -> usize {
        self.log.len()
            + self.log.values().map(Slot::vote_count).sum::<usize>()
            + self.archive.len()
            + self.ahead.values().map(VecDeque::len).sum::<usize>()
            + self.pending.len()
            + self.in_flight.len()
            + self.clients.len()
            + self.watched.len()
            + self.view_changes.len()
            + self
                .checkpoint_votes
                .values()
                .map(BTreeMap::len)
                .sum::<usize>()
            + self.checkpoint_reported.len()
            + self.signed.len()
            + self.snapshots.len()
    }

    /// The most entries [`Replica::memory_footprint`] may count under this replica's config,
    /// however long it runs and whatever its peers send: two windows of slots with two votes
    /// per validator each (the window, and as far again while catching up), the archive,
    /// per-peer buffers, pending and watched requests with their index entries, one view
    /// change per validator, checkpoint votes and reports, own checkpoints and snapshots for
    /// every checkpoint in reach, the votes it signed (three phases per slot), and the client table.
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
            + checkpoints * (2 * n + 2)
            + 3 * 2 * window
            + config.max_clients
    }

    /// The next output, in the order the host must act on them.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the replica next wants [`Replica::handle_timeout`]. After the first input there
    /// is always a next time: the status timer runs for retransmission and heartbeats.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.batch_deadline,
            self.view_deadline(),
            self.status_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time passed: cuts a batch whose delay ran out, gives up on a primary that did not
    /// deliver in time, and asks peers for what is missing.
    pub fn handle_timeout(&mut self, now: u64) {
        self.enter(now);
        if self.batch_deadline.is_some_and(|deadline| deadline <= now) {
            self.batch_deadline = None;
            self.propose(now, true);
        }
        self.check_view_timers();
        if self.status_deadline().is_some_and(|at| at <= now) {
            self.send_status();
            // Far behind (say, restored after a crash): fetch the newest stable state; a
            // transfer without progress for an interval asks the next peer.
            if !self.maybe_start_transfer() {
                self.request_state(true);
            }
        }
    }

    /// Notes the time of an input; the first one arms the status timer and hands the host
    /// what a restore left to deliver (the log's redo records past the store).
    fn enter(&mut self, now: u64) {
        self.now = now;
        if self.last_status.is_none() {
            self.last_status = Some(now);
            self.progress_at = now;
            if let Mode::ViewChange { since } = &mut self.mode {
                // Restored mid view change: count its time from the restart.
                *since = now;
            }
            self.deliver_ready();
        }
    }

    /// Bytes arrived from `from`, the peer key the transport authenticated.
    pub fn handle_message(
        &mut self,
        now: u64,
        from: &PublicKey,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.enter(now);
        self.metrics.messages_received += 1;
        let result = Message::decode(bytes, self.config.max_message_bytes)
            .map_err(Error::from)
            .and_then(|message| self.on_message(now, from, message));
        self.count(result)
    }

    /// A request from the host's own clients (in-process, or a gateway it serves).
    pub fn submit(&mut self, now: u64, request: Request) -> Result<(), Error> {
        self.enter(now);
        let result = self.on_request(now, request, true);
        self.count(result)
    }

    /// The host executed the delivery at `seq` and reports one result per executed request,
    /// and, when the delivery was a checkpoint, the application's snapshot after it (its
    /// canonical bytes: equal on every honest replica).
    ///
    /// Calls come in delivery order. The replica signs the replies and, at a checkpoint,
    /// signs the state's digest.
    pub fn executed(
        &mut self,
        now: u64,
        seq: u64,
        results: Vec<Vec<u8>>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        self.enter(now);
        let result = self.on_executed(now, seq, results, snapshot);
        self.count(result)
    }

    fn count(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        if let Err(err) = &result {
            *self.metrics.rejected.entry(err.label()).or_default() += 1;
        }
        result
    }

    fn high(&self) -> u64 {
        self.low.saturating_add(self.config.window)
    }

    fn on_message(&mut self, now: u64, from: &PublicKey, message: Message) -> Result<(), Error> {
        if let Message::Request(request) = message {
            // Only a client's own copy is forwarded: a copy a validator forwarded is never
            // forwarded again, or two replicas in different views would bounce it forever.
            let from_client = self.validators.id_of(from).is_none();
            return self.on_request(now, request, from_client);
        }
        let peer = self.validators.id_of(from).ok_or(Error::NotAValidator)?;
        match message {
            Message::Vote(vote) if vote.phase == Phase::Checkpoint => self.on_checkpoint_vote(vote),
            Message::PrePrepare(_) | Message::Vote(_) => self.on_consensus(from, message),
            Message::ViewChange(change) => self.on_view_change(peer, change),
            Message::NewView(new_view) => self.on_new_view(new_view),
            Message::Status(status) => self.on_status(peer, status),
            Message::Committed(committed) => self.on_committed(committed),
            Message::Checkpoint(checkpoint) => self.on_stable_checkpoint(checkpoint),
            Message::FetchState(fetch) => self.on_fetch_state(peer, fetch),
            Message::StateManifest(manifest) => self.on_manifest(peer, manifest),
            Message::StateChunk(chunk) => self.on_chunk(peer, chunk),
            Message::Request(_) | Message::Reply(_) => {
                Err(Error::UnexpectedMessage(message.kind()))
            }
        }
    }

    /// Checks view and window; buffers messages above the window.
    fn on_consensus(&mut self, from: &PublicKey, message: Message) -> Result<(), Error> {
        let (view, seq) = match &message {
            Message::PrePrepare(pre_prepare) => (pre_prepare.vote.view, pre_prepare.vote.seq),
            Message::Vote(vote) => (vote.view, vote.seq),
            _ => return Err(Error::UnexpectedMessage(message.kind())),
        };
        if view == self.view && self.mode != Mode::Normal {
            return Err(Error::ViewChanging);
        }
        if view < self.view {
            return Err(Error::StaleView {
                got: view,
                current: self.view,
            });
        }
        if view > self.view {
            return Err(Error::FutureView {
                got: view,
                current: self.view,
            });
        }
        if seq <= self.low {
            return Err(Error::OutOfWindow {
                seq,
                low: self.low + 1,
                high: self.high(),
            });
        }
        if seq > self.high() {
            let queue = self.ahead.entry(*from).or_default();
            if queue.len() >= self.config.max_future_per_peer {
                return Err(Error::FutureBufferFull);
            }
            queue.push_back(message);
            return Ok(());
        }
        match message {
            Message::PrePrepare(pre_prepare) => self.on_pre_prepare(pre_prepare),
            Message::Vote(vote) => self.on_vote(vote),
            _ => Err(Error::UnexpectedMessage(message.kind())),
        }
    }

    fn on_request(&mut self, now: u64, request: Request, forward: bool) -> Result<(), Error> {
        if request.op.len() > self.config.max_request_bytes {
            return Err(Error::RequestTooLarge {
                len: request.op.len(),
                max: self.config.max_request_bytes,
            });
        }
        match self.clients.freshness(&request.client, request.client_seq) {
            Freshness::Fresh => {}
            Freshness::LastExecuted(Some(reply)) => {
                let bytes = Message::Reply(reply.clone()).encode();
                let to = Destination::Client(request.client);
                self.send(to, bytes);
                return Ok(());
            }
            Freshness::LastExecuted(None) => return self.reply_again(&request),
            Freshness::Stale => return Err(Error::StaleRequest),
        }
        let digest = request.digest(&self.config.chain_id);
        let leads = self.is_primary() && self.mode == Mode::Normal;
        // Cheap checks first: a duplicate costs no signature verification.
        if leads && self.in_flight.contains(&digest) {
            return Err(Error::DuplicateRequest);
        }
        if leads && self.pending.len() >= self.config.max_pending_requests {
            return Err(Error::Overloaded);
        }
        if !leads && self.watched.contains_key(&digest) {
            // The client asks again: the primary may have lost it. One forward per copy
            // received, to the primary only: nothing to amplify.
            if forward && self.mode == Mode::Normal {
                let primary = self.validators.primary(self.view);
                self.send(
                    Destination::Validator(primary),
                    Message::Request(request).encode(),
                );
            }
            return Ok(());
        }
        if !leads && self.watched.len() >= self.config.max_pending_requests {
            return Err(Error::Overloaded);
        }
        if leads {
            // The signature is checked when the request is proposed, in one batch with the
            // rest of its batch (a third of the cost of checking each alone).
            request.client.check()?;
            self.in_flight.insert(digest);
            self.pending.push_back(request);
            self.propose(now, false);
            return Ok(());
        }
        let key = request.client.verifying_key()?;
        self.metrics.signatures_verified += 1;
        key.verify(&digest, &request.signature)?;
        // A backup (or a primary still waiting for its new view) holds the request against
        // a deadline: if it does not commit in time, the primary is replaced. This catches a
        // primary that censors some clients, and one that proposed the request but cannot
        // get it committed. It is held even if a proposal here already carries it: should
        // that proposal die in a view change, the new primary gets the request from here.
        let deadline = now.saturating_add(self.timeout());
        self.watched.entry(digest).or_insert_with(|| Watched {
            request: request.clone(),
            deadline,
        });
        if forward && self.mode == Mode::Normal {
            let primary = self.validators.primary(self.view);
            self.send(
                Destination::Validator(primary),
                Message::Request(request).encode(),
            );
        }
        Ok(())
    }

    /// Cuts batches from the pending requests while the window has room. Without `force`
    /// (the delay has not run out) only full batches go, unless nothing is in flight. Arms
    /// the batch timer for what is left, or disarms it when nothing can be proposed.
    fn propose(&mut self, now: u64, force: bool) {
        if self.mode != Mode::Normal || !self.is_primary() {
            self.batch_deadline = None;
            return;
        }
        while !self.pending.is_empty() && self.next_seq <= self.high() {
            let idle = self.next_seq == self.low + 1;
            if !force && !idle && self.pending.len() < self.config.max_batch_ops {
                break;
            }
            let mut requests = Vec::new();
            let mut bytes = 0;
            while let Some(request) = self.pending.front() {
                let len = request.encoded_len();
                let full = requests.len() >= self.config.max_batch_ops
                    || (!requests.is_empty() && bytes + len > self.config.max_batch_bytes);
                if full {
                    break;
                }
                bytes += len;
                if let Some(request) = self.pending.pop_front() {
                    requests.push(request);
                }
            }
            let (requests, leaves) = self.verified(requests);
            if requests.is_empty() {
                continue;
            }
            let batch = Batch { requests };
            let digest = merkle::root(&leaves);
            let seq = self.next_seq;
            self.next_seq += 1;
            let Some(vote) = self.sign_vote(Phase::PrePrepare, seq, digest) else {
                // This seq was proposed before a restart with another batch: skip it (the
                // view change will fill it) and keep the requests for the next one.
                for request in batch.requests.into_iter().rev() {
                    self.pending.push_front(request);
                }
                continue;
            };
            let slot = self.log.entry(seq).or_default();
            slot.digest = Some(digest);
            slot.proposal = Some(vote.clone());
            slot.leaves = leaves;
            slot.batch = Some(batch.clone());
            let record = Record::Signed(vote.clone());
            self.publish(record, &Message::PrePrepare(PrePrepare { vote, batch }));
            self.start_waiting();
            self.advance(seq);
        }
        self.batch_deadline = match self.pending.is_empty() || self.next_seq > self.high() {
            true => None,
            false => Some(
                self.batch_deadline
                    .unwrap_or(now.saturating_add(self.config.batch_delay_ms)),
            ),
        };
    }

    /// The requests about to be proposed whose client signatures hold, with their digests
    /// (the batch's Merkle leaves). One batch check; only if it fails, each alone to find
    /// the forged ones, which are dropped and counted.
    fn verified(&mut self, requests: Vec<Request>) -> (Vec<Request>, Vec<Digest>) {
        let chain = self.config.chain_id;
        let leaves: Vec<Digest> = requests.iter().map(|r| r.digest(&chain)).collect();
        let count = requests.len() as u64;
        self.metrics.signatures_verified += count;
        if count > 1 {
            self.metrics.signatures_batch_verified += count;
        }
        let mut batch = BatchVerifier::new();
        let queued = requests
            .iter()
            .zip(&leaves)
            .all(|(r, leaf)| batch.queue_key(&r.client, leaf, &r.signature).is_ok());
        if queued && batch.verify().is_ok() {
            return (requests, leaves);
        }
        let mut good = (Vec::new(), Vec::new());
        for (request, leaf) in requests.into_iter().zip(leaves) {
            let holds = request
                .client
                .verifying_key()
                .and_then(|key| key.verify(&leaf, &request.signature));
            self.metrics.signatures_verified += 1;
            match holds {
                Ok(()) => {
                    good.0.push(request);
                    good.1.push(leaf);
                }
                Err(err) => {
                    self.in_flight.remove(&leaf);
                    *self
                        .metrics
                        .rejected
                        .entry(Error::Crypto(err).label())
                        .or_default() += 1;
                }
            }
        }
        good
    }

    fn on_pre_prepare(&mut self, pre_prepare: PrePrepare) -> Result<(), Error> {
        let PrePrepare { vote, batch } = pre_prepare;
        if vote.phase != Phase::PrePrepare {
            return Err(Error::UnexpectedMessage("pre-prepare with another phase"));
        }
        let primary = self.validators.primary(vote.view);
        if vote.replica != primary {
            return Err(Error::WrongSigner(vote.replica));
        }
        let primary_key = *self.validators.key(primary).ok_or(Error::NotAValidator)?;
        let signed = vote.signed_digest(&self.config.chain_id, self.validators.epoch());
        let seq = vote.seq;
        if let Some(slot) = self.log.get(&seq)
            && let Some(accepted) = slot.proposal.as_ref()
        {
            if accepted.digest == vote.digest {
                if slot.batch.is_some() {
                    return Err(Error::Duplicate);
                }
                // A new view re-proposed this digest and the batch is still missing here. The
                // digest came from a prepared certificate, so a quorum (f + 1 honest among
                // them) checked the batch's requests: matching the digest is enough.
                return self.fill_batch(seq, batch);
            }
            // A second proposal for the slot: the primary equivocates if it signed both.
            self.metrics.signatures_verified += 1;
            primary_key.verify(&signed, &vote.signature)?;
            let first = accepted.clone();
            return self.report(seq, first, vote);
        }
        if let Some(slot) = self.log.get(&seq) {
            // Known without an accepted proposal of this view: committed (a QC from a peer or
            // the store), or prepared before a restart. A proposal for another digest can
            // never be ordered here, and the slot's batch must stay the one its QC certifies.
            if let Some(certificate) = &slot.certificate {
                return match certificate.digest == vote.digest {
                    true => Err(Error::Duplicate),
                    false => Err(Error::ConflictsWithCommit { seq }),
                };
            }
            if let Some(prepared) = slot.prepared.as_ref().map(|p| &p.proposal)
                && prepared.view == vote.view
                && prepared.digest != vote.digest
            {
                // The same primary signed another proposal in the same view: evidence.
                self.metrics.signatures_verified += 1;
                primary_key.verify(&signed, &vote.signature)?;
                let first = prepared.clone();
                return self.report(seq, first, vote);
            }
        }
        let requests = &batch.requests;
        let bytes: usize = requests.iter().map(Request::encoded_len).sum();
        if requests.is_empty()
            || requests.len() > self.config.max_batch_ops
            || bytes > self.config.max_batch_bytes
        {
            return Err(Error::BatchTooLarge);
        }
        if let Some(request) = requests
            .iter()
            .find(|r| r.op.len() > self.config.max_request_bytes)
        {
            return Err(Error::RequestTooLarge {
                len: request.op.len(),
                max: self.config.max_request_bytes,
            });
        }
        let leaves = batch.leaves(&self.config.chain_id);
        if merkle::root(&leaves) != vote.digest {
            return Err(Error::BatchDigestMismatch);
        }
        let mut unique = BTreeSet::new();
        if leaves
            .iter()
            .any(|leaf| !unique.insert(*leaf) || self.in_flight.contains(leaf))
        {
            return Err(Error::DuplicateRequest);
        }
        // One batch check for the primary's signature and every client's.
        let mut verifier = BatchVerifier::new();
        verifier.queue(&primary_key, &signed, &vote.signature);
        for (request, leaf) in requests.iter().zip(&leaves) {
            verifier.queue_key(&request.client, leaf, &request.signature)?;
        }
        self.metrics.signatures_verified += verifier.len() as u64;
        self.metrics.signatures_batch_verified += verifier.len() as u64;
        verifier.verify()?;

        self.in_flight.extend(leaves.iter().copied());
        let slot = self.log.entry(seq).or_default();
        slot.digest = Some(vote.digest);
        slot.proposal = Some(vote.clone());
        slot.leaves = leaves;
        slot.batch = Some(batch);
        if self.id != primary {
            self.cast(Phase::Prepare, seq, vote.digest);
        }
        self.start_waiting();
        self.advance(seq);
        Ok(())
    }

    /// Stores the batch of a slot whose proposal is known by digest only.
    fn fill_batch(&mut self, seq: u64, batch: Batch) -> Result<(), Error> {
        let leaves = batch.leaves(&self.config.chain_id);
        let Some(slot) = self.log.get_mut(&seq) else {
            return Err(Error::Duplicate);
        };
        if Some(merkle::root(&leaves)) != slot.digest {
            return Err(Error::BatchDigestMismatch);
        }
        self.in_flight.extend(leaves.iter().copied());
        slot.leaves = leaves;
        slot.batch = Some(batch);
        self.deliver_ready();
        Ok(())
    }

    fn on_vote(&mut self, vote: Vote) -> Result<(), Error> {
        if vote.phase == Phase::PrePrepare {
            return Err(Error::UnexpectedMessage(
                "pre-prepare vote without its batch",
            ));
        }
        let key = *self
            .validators
            .key(vote.replica)
            .ok_or(Error::NotAValidator)?;
        if vote.phase == Phase::Prepare && vote.replica == self.validators.primary(vote.view) {
            return Err(Error::WrongSigner(vote.replica));
        }
        let seq = vote.seq;
        if let Some(slot) = self.log.get(&seq) {
            if slot.has_same(&vote) {
                return Err(Error::Duplicate);
            }
            // The slot already holds the certificate this vote would count towards: checking
            // its signature would only cost (the log keeps slots until the next checkpoint,
            // so in the normal case the last vote of every phase arrives here).
            let complete = match vote.phase {
                Phase::Prepare => slot.commit_sent,
                _ => slot.certificate.is_some(),
            };
            if complete {
                return Err(Error::NotNeeded);
            }
        }
        self.metrics.signatures_verified += 1;
        key.verify(
            &vote.signed_digest(&self.config.chain_id, self.validators.epoch()),
            &vote.signature,
        )?;
        let slot = self.log.entry(seq).or_default();
        match slot.add_vote(vote.clone()) {
            VoteOutcome::Added => {
                self.advance(seq);
                Ok(())
            }
            VoteOutcome::Duplicate => Err(Error::Duplicate),
            VoteOutcome::Conflict(first) => self.report(seq, first, vote),
        }
    }

    /// Emits evidence of a verified conflicting vote (once per signer and slot).
    fn report(&mut self, seq: u64, first: Vote, second: Vote) -> Result<(), Error> {
        let culprit = second.replica;
        let epoch = self.validators.epoch();
        if let Some(evidence) = self
            .log
            .get_mut(&seq)
            .and_then(|slot| slot.evidence(epoch, first, second))
        {
            self.metrics.evidence_reported += 1;
            self.outputs.push_back(Output::Evidence(evidence));
        }
        Err(Error::Equivocation(culprit))
    }

    /// Moves slot `seq` forward: prepared → commit sent → committed → delivered.
    fn advance(&mut self, seq: u64) {
        let quorum = self.validators.quorum();
        let primary = self.validators.primary(self.view);
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        let current = slot.proposal.as_ref().is_some_and(|p| p.view == self.view);
        if current
            && !slot.commit_sent
            && slot.is_prepared(quorum, primary)
            && let Some(digest) = slot.digest
        {
            // The certificate outlives the view, and a crash: a view change must carry it.
            slot.prepared = slot.prepared_certificate(quorum, primary);
            slot.commit_sent = true;
            if let Some(prepared) = slot.prepared.clone() {
                let batch = slot.batch.clone();
                slot.batch_logged = batch.is_some();
                self.outputs
                    .push_back(Output::Persist(Record::Prepared(prepared, batch)));
            }
            self.cast(Phase::Commit, seq, digest);
        }
        let chain = self.config.chain_id;
        let epoch = self.validators.epoch();
        if let Some(slot) = self.log.get_mut(&seq)
            && slot.commit_sent
            && slot.certificate.is_none()
        {
            slot.certificate = slot.commit_certificate(chain, epoch, seq, quorum);
        }
        self.deliver_ready();
    }

    /// Hands committed batches to the host, strictly in sequence order.
    fn deliver_ready(&mut self) {
        let before = self.last_delivered;
        // One delivery at a time: the next only once the host executed the last, so the
        // exactly-once table a checkpoint snapshots is exactly as of the checkpoint's seq.
        while self.last_delivered == self.executed
            && let Some(slot) = self.log.get_mut(&(self.last_delivered + 1))
        {
            let Some(certificate) = slot.certificate.clone() else {
                break;
            };
            let Some(batch) = slot.batch.clone() else {
                break;
            };
            let seq = self.last_delivered + 1;
            for leaf in &slot.leaves {
                self.watched.remove(leaf);
            }
            slot.executing.clear();
            let mut execute = Vec::new();
            let mut forgotten = Vec::new();
            for (index, request) in batch.requests.iter().enumerate() {
                if self.clients.freshness(&request.client, request.client_seq) == Freshness::Fresh {
                    forgotten.extend(self.clients.record_execution(
                        request.client,
                        request.client_seq,
                        seq,
                    ));
                    execute.push(index as u32);
                    slot.executing.push((request.client, request.client_seq));
                } else {
                    self.metrics.requests_skipped += 1;
                }
            }
            // A client forgotten and then recorded again within the batch keeps its row.
            forgotten.retain(|client| !self.clients.contains(client));
            forgotten.sort_unstable();
            forgotten.dedup();
            let checkpoint = seq.is_multiple_of(self.config.checkpoint_interval);
            self.metrics.batches_committed += 1;
            self.metrics.requests_committed += batch.requests.len() as u64;
            self.metrics.requests_executed += execute.len() as u64;
            self.last_delivered = seq;
            // The batch is in the log already if this replica's prepared record carried it and
            // no compaction dropped that record (it keeps them above the stable checkpoint).
            let logged = slot.batch_logged
                && seq > self.stable.seq
                && slot
                    .prepared
                    .as_ref()
                    .is_some_and(|p| p.proposal.digest == certificate.digest);
            let redo = (!logged).then(|| batch.clone());
            self.outputs.push_back(Output::Persist(Record::Committed(
                certificate.clone(),
                redo,
            )));
            self.outputs.push_back(Output::Deliver(Delivery {
                seq,
                batch,
                certificate,
                execute,
                checkpoint,
                forgotten,
                client_floor: self.clients.floor(),
            }));
        }
        if self.last_delivered > before {
            self.made_progress();
        }
    }

    fn on_executed(
        &mut self,
        now: u64,
        seq: u64,
        results: Vec<Vec<u8>>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        if seq != self.executed + 1 || seq > self.last_delivered {
            return Err(Error::HostContract("executed() must follow delivery order"));
        }
        let checkpoint = seq.is_multiple_of(self.config.checkpoint_interval);
        if checkpoint != snapshot.is_some() {
            return Err(Error::HostContract(
                "executed() takes a snapshot exactly at checkpoint seqs",
            ));
        }
        if snapshot
            .as_ref()
            .is_some_and(|app| app.len() as u64 > self.config.max_snapshot_bytes)
        {
            return Err(Error::HostContract(
                "the application snapshot exceeds max_snapshot_bytes",
            ));
        }
        let Some(slot) = self.log.get_mut(&seq) else {
            return Err(Error::HostContract("executed() for a seq never delivered"));
        };
        let Some(certificate) = slot.certificate.as_ref() else {
            return Err(Error::HostContract("executed() for a seq never delivered"));
        };
        if results.len() != slot.executing.len() {
            return Err(Error::HostContract(
                "executed() needs one result per executed request",
            ));
        }
        let view = certificate.view;
        let executing = core::mem::take(&mut slot.executing);
        let request_leaves = core::mem::take(&mut slot.leaves);
        let chain = self.config.chain_id;
        let leaves: Vec<Digest> = executing
            .iter()
            .zip(&results)
            .map(|((client, client_seq), result)| reply_leaf(&chain, client, *client_seq, result))
            .collect();
        let tree = merkle::Tree::new(&leaves);
        let signed = reply_root_digest(&chain, self.validators.epoch(), view, seq, &tree.root());
        // A null batch, or one whose requests all ran before, has no one to answer.
        let signature = match executing.is_empty() {
            true => crate::crypto::Signature([0; 64]),
            false => {
                self.metrics.signatures_created += 1;
                self.keypair.sign(&signed)
            }
        };
        for (index, (&(client, client_seq), result)) in executing.iter().zip(results).enumerate() {
            let Some(proof) = tree.prove(index) else {
                continue;
            };
            let reply = Reply {
                view,
                seq,
                client,
                client_seq,
                result,
                proof,
                replica: self.id,
                signature,
            };
            self.send(
                Destination::Client(client),
                Message::Reply(reply.clone()).encode(),
            );
            self.clients.store_reply(reply);
        }
        for leaf in &request_leaves {
            self.in_flight.remove(leaf);
        }
        self.executed = seq;
        if let Some(app) = snapshot {
            let clients = self.clients.export();
            let snapshot = Snapshot::new(seq, app, clients, self.config.snapshot_chunk_bytes);
            let state = snapshot.manifest.digest(&chain);
            self.snapshots.insert(seq, snapshot);
            self.checkpoint(seq, state);
        }
        self.update_low();
        if self.is_primary() && !self.pending.is_empty() {
            self.propose(now, false);
        }
        self.deliver_ready();
        Ok(())
    }

    /// Answers a retransmission of a client's last executed request for which no reply is
    /// cached (this replica installed the state that executed it): signs a reply of its own
    /// from the replicated result, once, and caches it.
    fn reply_again(&mut self, request: &Request) -> Result<(), Error> {
        let Some((seq, result)) = self.clients.last_result(&request.client) else {
            return Err(Error::Duplicate);
        };
        let chain = self.config.chain_id;
        let leaf = reply_leaf(&chain, &request.client, request.client_seq, &result);
        let (Some(proof), root) = (merkle::prove(&[leaf], 0), merkle::root(&[leaf])) else {
            return Err(Error::Duplicate);
        };
        let signed = reply_root_digest(&chain, self.validators.epoch(), self.view, seq, &root);
        self.metrics.signatures_created += 1;
        let reply = Reply {
            view: self.view,
            seq,
            client: request.client,
            client_seq: request.client_seq,
            result,
            proof,
            replica: self.id,
            signature: self.keypair.sign(&signed),
        };
        let bytes = Message::Reply(reply.clone()).encode();
        self.send(Destination::Client(request.client), bytes);
        self.clients.store_reply(reply);
        Ok(())
    }

    /// Replays buffered messages that the moved window now covers; drops those below it.
    fn replay_ahead(&mut self, now: u64) {
        let high = self.high();
        let mut ready = Vec::new();
        for (peer, queue) in self.ahead.iter_mut() {
            queue.retain(|message| {
                let seq = match message {
                    Message::PrePrepare(p) => p.vote.seq,
                    Message::Vote(v) => v.seq,
                    _ => 0,
                };
                if seq <= high {
                    ready.push((*peer, message.clone()));
                    false
                } else {
                    true
                }
            });
        }
        self.ahead.retain(|_, queue| !queue.is_empty());
        for (peer, message) in ready {
            let result = self.on_message(now, &peer, message);
            // Failures are counted like any input's; the replay goes on.
            let _ = self.count(result);
        }
    }

    /// Signs a prepare or commit, persists it, then broadcasts it and counts it locally.
    /// The order is the durability contract: the record precedes the send.
    fn cast(&mut self, phase: Phase, seq: u64, digest: Digest) {
        if seq <= self.stable.seq {
            // Every slot at or below the stable checkpoint is final: there is nothing left to
            // vote on, and a replica restored from its records (which keep no votes down
            // there) must not be led into a vote for another digest.
            self.metrics.refused_to_equivocate += 1;
            return;
        }
        let Some(vote) = self.sign_vote(phase, seq, digest) else {
            return;
        };
        self.publish(Record::Signed(vote.clone()), &Message::Vote(vote.clone()));
        if let Some(slot) = self.log.get_mut(&seq) {
            slot.add_vote(vote);
        }
    }

    /// Signs a vote of the current view, unless it contradicts what this replica executed.
    fn sign_vote(&mut self, phase: Phase, seq: u64, digest: Digest) -> Option<Vote> {
        if !self.agrees_with_executed(seq, digest) {
            self.metrics.refused_to_equivocate += 1;
            return None;
        }
        self.sign(phase, (self.view, seq), digest)
    }

    /// Whether a vote for `digest` at `seq` agrees with what this replica executed: at or
    /// below its executed seq only the digest its QC there certifies, and nothing where it no
    /// longer holds that QC. After a restart the signed index is gone below the stable
    /// checkpoint, but the executed batches (from the host's store) still say what committed.
    fn agrees_with_executed(&self, seq: u64, digest: Digest) -> bool {
        let certified = match self.log.get(&seq) {
            Some(slot) => slot.certificate.as_ref().map(|qc| qc.digest),
            None => self
                .archive
                .iter()
                .rev()
                .find(|committed| committed.certificate.seq == seq)
                .map(|committed| committed.certificate.digest),
        };
        match certified {
            Some(certified) => certified == digest,
            // At or below the stable checkpoint the only signature asked for is a new view's
            // re-proposal, which every replica checks against the view changes; prepares and
            // commits there are refused in `cast`.
            None => seq > self.executed || seq <= self.stable.seq,
        }
    }

    /// The one place votes are signed. It refuses to sign a second digest for a (phase,
    /// view, seq) it already signed — also across restarts, since every signed vote is
    /// persisted and restored — and hands back the first vote when asked for the same one.
    fn sign(&mut self, phase: Phase, slot: (u64, u64), digest: Digest) -> Option<Vote> {
        let key = (phase, slot.0, slot.1);
        if let Some(previous) = self.signed.get(&key) {
            if previous.digest == digest {
                return Some(previous.clone());
            }
            self.metrics.refused_to_equivocate += 1;
            return None;
        }
        self.metrics.signatures_created += 1;
        let vote = Vote::new(
            &self.config.chain_id,
            self.validators.epoch(),
            phase,
            slot,
            digest,
            self.id,
            &self.keypair,
        );
        self.signed.insert(key, vote.clone());
        Some(vote)
    }

    /// Makes `record` durable, then broadcasts `message`, which carries its signature: the
    /// order is the durability contract.
    fn publish(&mut self, record: Record, message: &Message) {
        self.outputs.push_back(Output::Persist(record));
        self.send(Destination::AllValidators, message.encode());
    }

    fn send(&mut self, to: Destination, bytes: Vec<u8>) {
        let copies = match to {
            Destination::AllValidators => self.validators.len().saturating_sub(1),
            _ => 1,
        };
        self.metrics.bytes_sent += (bytes.len() * copies) as u64;
        self.outputs.push_back(Output::Send { to, bytes });
    }
}
