//! The node driver: a replica, its write-ahead log and its application, turned into actions
//! a transport carries out. Runtime-agnostic: the QUIC and TCP adapters own sockets, tasks
//! and timers, and call into this.
//!
//! The transport feeds every input that is ready (`handle_message`, `submit`,
//! `handle_timeout`), then calls [`Node::flush`]: it runs the core's outputs — records go to the
//! log, deliveries execute on the application and report back, an installed state replaces the
//! application's — then makes the round durable with one `fdatasync` of the log (group
//! commit), and only then returns the messages to send. Nothing signed leaves before its record
//! is durable, and no reply before the redo record of the batch it reports. The application
//! store (its state, the exactly-once table, the executed seq and the committed batches, in one
//! transaction) is committed after the log, durably about once a second and before every
//! compaction of the log, so it never runs ahead of the log and the log always covers what it
//! lacks.
//!
//! A durable commit of the store takes two fsyncs of scattered pages (tens of ms on a busy
//! disk). With a sync thread ([`Node::syncs_on_thread`]) it runs there while the node goes
//! on ordering, logging and sending; only what writes the store (deliveries, installs)
//! waits for it, so only this replica's replies wait, and a client needs f + 1 of them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pbft_core::{
    CheckPool, Config, ConfigError, DecodeError, Delivery, Destination, Digest, EpochChange, Error,
    Evidence, ExecutedState, Hasher, Install, JoinError, Keypair, Metrics, Output,
    PROTOCOL_VERSION, PublicKey, Record, Replica, Request, ValidatorSet, Vote,
};
use redb::ReadTransaction;

// The application contract has a module of its own; it stays reachable from here, where
// embedders found it first.
pub use crate::application::{AppError, Application};
use crate::kv::SnapshotError;
use crate::snapshots::{Outcome as SnapshotOutcome, Snapshots};
use crate::store::{Round, Store, StoreError, SyncOutcome};
use crate::wal::{Wal, WalError, WalOptions};
use crate::wire::{NodeStatus, ProofBundle};

/// Why a node stopped or cannot start. Each is fatal: a node that cannot persist must not
/// sign.
#[derive(Debug)]
pub enum NodeError {
    /// The log failed.
    Wal(WalError),
    /// A record in the log does not decode: written by another protocol version, or damaged.
    BadRecord {
        /// The log's directory.
        dir: PathBuf,
        /// Position of the record in the log.
        index: usize,
        /// Why it does not decode.
        error: DecodeError,
    },
    /// The replica cannot start with this config, set and key.
    Config(ConfigError),
    /// A validator outside the genesis set cannot join with the chain it was given.
    Join(JoinError),
    /// The core refused a report of this node's own execution: a bug in the driver.
    Core(Error),
    /// A state fetched from peers (and checked against their signed checkpoint) is not a
    /// snapshot this application can read.
    Snapshot(SnapshotError),
    /// The application store failed.
    Store(StoreError),
    /// The application failed inside the store (`path` is the store's file).
    App {
        /// The store's file.
        path: PathBuf,
        /// What the application reported.
        source: AppError,
    },
    /// Another process holds the data dir: two nodes on one log would sign twice.
    Locked(PathBuf),
    /// The core asked for an output this host does not know (`Output` is non-exhaustive):
    /// carrying on could break its contract, so the node stops.
    UnhandledOutput(String),
    /// The thread that takes checkpoint snapshots is gone (it panicked).
    SnapshotThread,
    /// The thread that makes the store durable is gone (it panicked).
    SyncThread,
}

// Written by hand, not derived: `thiserror` would make the `source` field of `App` the error's
// `source()`, which `NodeError` has never reported (its message already includes it).
impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Wal(err @ WalError::Corrupt { .. }) => write!(
                f,
                "write-ahead log: {err} (`pbft data inspect DATA_DIR` shows what lies behind the damage, `pbft data repair DATA_DIR` cuts it there after keeping a copy)"
            ),
            NodeError::Wal(err) => write!(f, "write-ahead log: {err}"),
            NodeError::BadRecord {
                dir,
                index,
                error: DecodeError::UnsupportedVersion(version),
            } => write!(
                f,
                "{}: record {index} was written by protocol version {version}; this build reads version {PROTOCOL_VERSION} only (run the release that wrote the data dir, or start this node on an empty one and let it catch up from its peers)",
                dir.display()
            ),
            NodeError::BadRecord { dir, index, error } => {
                write!(
                    f,
                    "{}: record {index} is not a pbft record: {error}",
                    dir.display()
                )
            }
            NodeError::Config(err) => write!(f, "config: {err}"),
            NodeError::Join(err) => write!(f, "joining the validator set: {err}"),
            NodeError::Core(err) => write!(f, "core refused the node's own execution: {err}"),
            NodeError::Snapshot(err) => write!(f, "installing a fetched state: {err}"),
            NodeError::Store(err) => write!(f, "application store: {err}"),
            NodeError::App { path, source } => write!(
                f,
                "application store {}: {source} (free disk space if it is full)",
                path.display()
            ),
            NodeError::Locked(dir) => {
                write!(f, "{} is in use by another process", dir.display())
            }
            NodeError::SnapshotThread => write!(f, "the checkpoint snapshot thread stopped"),
            NodeError::SyncThread => write!(f, "the store's sync thread stopped"),
            NodeError::UnhandledOutput(output) => write!(
                f,
                "the core asked for an output this host does not handle: {output} (build the host with its core)"
            ),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<WalError> for NodeError {
    fn from(err: WalError) -> Self {
        NodeError::Wal(err)
    }
}

impl From<StoreError> for NodeError {
    fn from(err: StoreError) -> Self {
        NodeError::Store(err)
    }
}

/// Who receives a [`Transmit`]: validators by key, since the set changes by epoch and the
/// transport's links are to keys ([`crate::peers::Peers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The validator holding this key (of the node's epoch, or one outside it the core
    /// answers: a validator being added, or one removed).
    Validator(PublicKey),
    /// Every other validator of the node's epoch.
    AllValidators,
    /// A client, on its connection or its relay's.
    Client(PublicKey),
}

/// A message to put on the wire, now that what it carries is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Who receives it.
    pub to: Target,
    /// The encoded message.
    pub bytes: Vec<u8>,
    /// For a reply: the listed gateway that attested the request it answers, which carries
    /// it when the client has no connection or relay here (a backup sees an attested
    /// request only inside a pre-prepare).
    pub via: Option<PublicKey>,
}

/// Clients whose attesting gateway a node remembers for their replies (about 2 MiB).
pub const ATTESTED_BY_KEPT: usize = 1 << 15;

/// Counters of the driver, beside the core's [`Metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Batches executed.
    pub batches_executed: u64,
    /// Operations executed.
    pub ops_executed: u64,
    /// States installed from peers.
    pub installs: u64,
    /// Log compactions after a stable checkpoint.
    pub compactions: u64,
    /// Equivocation evidence seen.
    pub evidence: u64,
    /// Deliveries an install overtook before they ran (void by the `Install` contract).
    pub void_deliveries: u64,
    /// Durable commits of the application store (at most one per round: before each log
    /// compaction, and at least every [`STORE_SYNC_MS`] while executing).
    pub store_commits: u64,
}

/// The file in a data dir whose lock a running node holds (an advisory `flock`, released
/// when the process dies, however it dies): what tells a second node, or `pbft data`, that the
/// dir is in use.
pub const LOCK_FILE: &str = "LOCK";

/// Takes the exclusive lock on `dir/LOCK` (released when the process dies, however it dies).
fn lock_dir(dir: &Path) -> Result<std::fs::File, NodeError> {
    std::fs::create_dir_all(dir).map_err(|source| WalError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(NodeError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(WalError::Io { path, source }.into()),
    }
}

/// Most evidence kept for the operator to collect; beyond it only the count grows.
const EVIDENCE_KEPT: usize = 64;

/// Client requests whose arrival time is kept to measure commit latency; beyond it new ones
/// are not timed (a flood of requests cannot grow the map).
const TIMED_REQUESTS: usize = 4096;

/// Most time the application store goes without a durable commit while the node executes,
/// ms: what a restart replays from the log's redo records (it is also made durable before
/// every compaction of the log). Every 100 ms on the sync thread cut the p99 at 64 clients
/// a little and cost 18 % of the peak (README, "the tail is the store's fsync").
pub const STORE_SYNC_MS: u64 = 1000;

/// Least time between two digests of the whole application state for status queries, ms.
pub const STATE_DIGEST_EVERY_MS: u64 = 1000;

/// Most bytes of log records a node copies while its store syncs on the sync thread for a
/// compaction of the log (they follow the compacted records); past it that compaction waits
/// for the next durable commit, so a disk that syncs slowly costs no memory without bound.
const COMPACTION_TAIL_BYTES: usize = 64 << 20;

/// Checkpoint snapshots the node lets its thread queue; at one more, the node waits for the
/// oldest (each holds a read transaction, whose pages the store keeps, and a client table).
pub const MAX_SNAPSHOTS_PENDING: usize = 2;

/// Latency samples kept between two [`Node::take_samples`].
const SAMPLES_KEPT: usize = 4096;

/// Timings a node measured since they were last taken, for the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// Milliseconds from a request's arrival at this node to the delivery of its batch.
    pub commit_ms: Vec<u64>,
    /// Seconds each log sync took.
    pub sync_seconds: Vec<f64>,
    /// Seconds each durable commit of the application store took.
    pub store_commit_seconds: Vec<f64>,
    /// Requests in each delivered batch.
    pub batch_sizes: Vec<usize>,
    /// Seconds each checkpoint held the node's thread: committing its round (unsynced) and
    /// the replica's report of the batch (its replies); without a snapshot thread, also the
    /// application's snapshot, the state digest over it and the copy kept for peers, which
    /// grow with the state.
    pub checkpoint_seconds: Vec<f64>,
    /// Seconds the snapshot thread took per checkpoint: reading the application's snapshot,
    /// digesting it, encoding the copy kept for peers.
    pub snapshot_seconds: Vec<f64>,
    /// Milliseconds from the first evidence of a validator's equivocation this node saw
    /// (found in the conflicting message that reached it, or received from a peer) to the
    /// delivery of the batch that commits evidence against that validator.
    pub evidence_commit_ms: Vec<u64>,
}

impl Samples {
    fn push<T>(list: &mut Vec<T>, value: T) {
        if list.len() < SAMPLES_KEPT {
            list.push(value);
        }
    }
}

/// A validator: replica, log and application.
pub struct Node<A> {
    /// Holds the data dir's lock for as long as the node lives.
    _lock: std::fs::File,
    replica: Replica,
    /// The set of the epoch the outputs being carried out were made in: a
    /// [`Destination::Validator`] id is a position in it, until an [`Output::EpochStarted`].
    output_set: ValidatorSet,
    wal: Wal,
    store: Store,
    app: A,
    stats: NodeStats,
    evidence: Vec<Evidence>,
    /// What [`Node::members_changed`] last answered.
    members: Option<(Vec<PublicKey>, Vec<PublicKey>)>,
    /// Batches the store keeps below the stable checkpoint, for peers a little behind.
    retained_batches: u64,
    /// When the store's last durable commit started (the driver's clock, ms); `None` until
    /// the first flush, which makes the replay of the log's redo records durable at once.
    store_synced_at: Option<u64>,
    /// The store transaction rounds write into until it is committed: rounds between two
    /// durable commits share it (the log's redo records cover them), so a B-tree page is
    /// copied once per commit, not once per round. Reads commit it (without a sync) first.
    round: Option<Round>,
    /// Arrival time of requests submitted here, by (client, number).
    arrivals: BTreeMap<(PublicKey, u64), u64>,
    /// When this node first saw evidence against each offender (its epoch and id), in ms,
    /// until evidence against it commits: the start of [`Samples::evidence_commit_ms`].
    evidence_seen: BTreeMap<(u64, u16), u64>,
    samples: Samples,
    max_message_bytes: usize,
    chain: pbft_core::ChainId,
    /// The gateway that attested each client's latest executed request, for its reply
    /// ([`Transmit::via`]); at most [`ATTESTED_BY_KEPT`] clients, then it starts afresh.
    attested_by: HashMap<PublicKey, PublicKey>,
    /// The last state digest taken for a status query: (seq, digest, when).
    state_digest: Option<(u64, Digest, u64)>,
    /// The executed seq, and when (ms) this node saw it reached (its start, before any
    /// execution): the age of the last commit a status query reports.
    progress: (u64, u64),
    /// Whether [`Node::check_for_rollback`] runs (off only by the config's
    /// `unsafe_skip_rollback_check`).
    rollback_check: bool,
    /// The thread that takes checkpoint snapshots, if the node was given one
    /// ([`Node::snapshots_on_thread`]); without, they are taken on the node's thread.
    snapshots: Option<Snapshots>,
    /// Checkpoint states the replica signed since the last flush, encoded for the store:
    /// (seq, record).
    to_record: Vec<(u64, Vec<u8>)>,
    /// Snapshot jobs handed to the thread and not finished.
    snapshots_pending: usize,
    /// The store was made durable as of everything executed, the last thing a node does
    /// before a clean stop.
    stopped_cleanly: bool,
    /// A stable checkpoint was logged: the log is to be compacted (and the store made
    /// durable first) once no snapshot is outstanding and no sync is in flight; with a sync
    /// thread, when the sync started for it reports.
    compact_due: bool,
    /// Deliveries and installs the core emitted while the store synced on its thread, in
    /// order: they write the store, so they wait for that commit. At most one install and
    /// one delivery after it ([`Node::defer`]).
    deferred: VecDeque<Output>,
    /// The compaction of the log a sync on the store's thread is for, carried out when it
    /// reports.
    compaction: Option<Compaction>,
}

/// A compaction of the log waiting for the store to be durable: the records a restart
/// needed when the sync started, then copies of every record logged since, in order, so
/// that replaying them is replaying the log from that point on.
struct Compaction {
    records: Vec<Vec<u8>>,
    /// Bytes of records logged since the sync started.
    tail_bytes: usize,
}

/// Finished checkpoint snapshots: nothing here needs the application.
impl<A> Node<A> {
    /// Where the snapshot thread's results arrive, if the node has one: wait on it beside
    /// the other inputs, and hand each to [`Node::snapshot_finished`].
    pub fn finished_snapshots(&self) -> Option<flume::Receiver<SnapshotOutcome>> {
        self.snapshots.as_ref().map(|s| s.done().clone())
    }

    /// A checkpoint snapshot the thread finished: the replica signs the checkpoint, and the
    /// next flush keeps the state in the store (if the replica kept it: one a fetched state
    /// replaced meanwhile is dropped).
    ///
    /// # Errors
    ///
    /// The application could not read its snapshot, or the core refused it (a driver bug).
    /// Both are fatal, as for a snapshot taken on the node's thread.
    pub fn snapshot_finished(
        &mut self,
        now: u64,
        outcome: SnapshotOutcome,
    ) -> Result<(), NodeError> {
        self.snapshots_pending = self.snapshots_pending.saturating_sub(1);
        let finished = outcome.map_err(|source| NodeError::App {
            path: self.store.path().to_path_buf(),
            source,
        })?;
        let seq = finished.taken.seq();
        let kept = self
            .replica
            .snapshot_taken(now, finished.taken)
            .map_err(NodeError::Core)?;
        if kept {
            self.to_record.push((seq, finished.record));
        }
        Samples::push(&mut self.samples.snapshot_seconds, finished.seconds);
        Ok(())
    }

    /// Waits for the snapshot thread to finish every job handed to it, and reports each
    /// ([`Node::snapshot_finished`]); the next flush logs and sends the checkpoint votes.
    ///
    /// # Errors
    ///
    /// As [`Node::snapshot_finished`], and [`NodeError::SnapshotThread`] if the thread is
    /// gone (it panicked).
    pub fn wait_for_snapshots(&mut self, now: u64) -> Result<(), NodeError> {
        while self.snapshots_pending > 0 {
            self.wait_for_snapshot(now)?;
        }
        Ok(())
    }

    /// Snapshot jobs handed to the thread and not reported yet.
    pub fn snapshots_pending(&self) -> usize {
        self.snapshots_pending
    }

    /// Waits for the oldest snapshot outstanding, if any, and reports it.
    fn wait_for_snapshot(&mut self, now: u64) -> Result<(), NodeError> {
        let Some(done) = self.finished_snapshots() else {
            return Ok(());
        };
        let outcome = done.recv().map_err(|_| NodeError::SnapshotThread)?;
        self.snapshot_finished(now, outcome)
    }

    /// Makes the store durable on a thread of its own ([`Store::sync_on_thread`]): a durable
    /// commit no longer holds the node's thread, only what writes the store waits for it.
    /// Each report comes back through [`Node::finished_syncs`], for [`Node::store_synced`].
    ///
    /// # Errors
    ///
    /// The thread cannot be spawned.
    pub fn syncs_on_thread(&mut self) -> std::io::Result<()> {
        self.store.sync_on_thread()
    }

    /// Where the store's sync thread reports, if the node has one: wait on it beside the
    /// other inputs, and hand each report to [`Node::store_synced`].
    pub fn finished_syncs(&self) -> Option<flume::Receiver<SyncOutcome>> {
        self.store.finished_syncs()
    }

    /// The store's sync thread made it durable (as of when the sync started): the log is
    /// compacted now if that sync was for it, and the next flush executes what waited.
    ///
    /// # Errors
    ///
    /// The durable commit failed (a full disk, an I/O error), or the log cannot be
    /// compacted: fatal, the node stops.
    pub fn store_synced(&mut self, outcome: SyncOutcome) -> Result<(), NodeError> {
        let seconds = self.store.sync_finished(outcome)?;
        self.synced(seconds);
        if let Some(compaction) = self.compaction.take() {
            self.compact_log(&compaction.records)?;
        }
        Ok(())
    }

    /// Deliveries and installs waiting for the durable commit running on the store's thread.
    pub fn waiting_for_sync(&self) -> usize {
        self.deferred.len()
    }

    /// Waits for the durable commit running on the store's thread, if any, and reports it
    /// ([`Node::store_synced`]).
    ///
    /// # Errors
    ///
    /// As [`Node::store_synced`], and [`NodeError::SyncThread`] if the thread is gone.
    pub fn wait_for_sync(&mut self) -> Result<(), NodeError> {
        if !self.store.syncing() {
            return Ok(());
        }
        let Some(done) = self.finished_syncs() else {
            return Ok(());
        };
        let outcome = done.recv().map_err(|_| NodeError::SyncThread)?;
        self.store_synced(outcome)
    }

    /// The records a restart needs now, encoded for the log.
    fn live_records(&self) -> Vec<Vec<u8>> {
        self.replica
            .durable_records()
            .iter()
            .map(Record::encode)
            .collect()
    }

    /// Replaces the log by `records`, the store being durable as of everything they do not
    /// cover.
    fn compact_log(&mut self, records: &[Vec<u8>]) -> Result<(), NodeError> {
        self.wal.compact(records)?;
        self.stats.compactions += 1;
        Ok(())
    }

    /// Counts a durable commit of the store that took `seconds`.
    fn synced(&mut self, seconds: f64) {
        self.stats.store_commits += 1;
        Samples::push(&mut self.samples.store_commit_seconds, seconds);
    }

    /// Logs `record`, and keeps a copy for the compaction waiting for the store's sync.
    fn log(&mut self, record: &Record) -> Result<(), NodeError> {
        let bytes = record.encode();
        self.wal.append(&bytes)?;
        if let Some(compaction) = self.compaction.as_mut() {
            compaction.tail_bytes += bytes.len();
            if compaction.tail_bytes > COMPACTION_TAIL_BYTES {
                // A sync that slow: the next durable commit compacts instead.
                self.compaction = None;
                self.compact_due = true;
            } else {
                compaction.records.push(bytes);
            }
        }
        Ok(())
    }
}

impl<A> Drop for Node<A> {
    /// A node that did not stop cleanly ([`Node::sync_store`]) leaves its store as a crash
    /// would ([`Store::abandon`]): redb would make its unsynced commits durable on close, and
    /// they may run past what the log vouches for (a checkpoint whose vote never reached the
    /// log, which a restart could then never sign). Its log's redo records replay them.
    fn drop(&mut self) {
        if !self.stopped_cleanly {
            self.store.abandon();
        }
        // An open round (a write transaction) goes before the store, whose sync thread may
        // be waiting to begin one.
        drop(self.round.take());
    }
}

/// Tells the operator what rollback protection found.
fn log_recovery(report: &pbft_core::RecoveryReport) {
    match (report.closed_through_view, report.view_changes_from_seq) {
        (Some(view), Some(seq)) if report.lost > 0 => tracing::error!(
            answered = report.answered,
            lost = report.lost,
            "rollback detected: the other validators hold {} statements this key signed that its log lacks (was the data dir restored from an old copy, or does this key run elsewhere too?); to never sign a conflicting one it signs nothing in views up to {view}, and no view change until its stable checkpoint reaches seq {seq}: it takes part again from the next view change",
            report.lost
        ),
        _ => tracing::info!(
            answered = report.answered,
            "rollback protection: the log holds everything the other validators hold signed by this key; signing"
        ),
    }
}

impl<A: Application> Node<A> {
    /// Opens the log and the application store in `dir` (creating them) and restores the
    /// replica from its records and from the store: it resumes at the store's executed seq
    /// with `app`, whose state is in the store.
    pub fn open(
        dir: &Path,
        config: Config,
        validators: ValidatorSet,
        keypair: Keypair,
        app: A,
    ) -> Result<Node<A>, NodeError> {
        Node::open_with(dir, config, app, |config, records, executed| {
            Replica::restore(config, validators, keypair, records, executed)
                .map_err(NodeError::Config)
        })
    }

    /// A validator a reconfiguration added, outside the genesis set `genesis`: with an empty
    /// log in `dir`, starts it from `chain` (the epoch changes from genesis to one whose set
    /// holds its key, [`Replica::join`]; it fetches the state from its peers); with a log, it
    /// joined before and is restored from it as [`Node::open`] does, `chain` unused.
    ///
    /// # Errors
    ///
    /// [`Node::open`]'s, and [`NodeError::Join`] if `chain` does not verify from `genesis`
    /// or its last set lacks the key.
    pub fn join(
        dir: &Path,
        config: Config,
        genesis: ValidatorSet,
        keypair: Keypair,
        chain: Vec<EpochChange>,
        app: A,
    ) -> Result<Node<A>, NodeError> {
        Node::open_with(dir, config, app, |config, records, executed| {
            if records.is_empty() && executed.executed == 0 {
                Replica::join(config, genesis, keypair, chain).map_err(NodeError::Join)
            } else {
                Replica::restore(config, genesis, keypair, records, executed)
                    .map_err(NodeError::Config)
            }
        })
    }

    /// Whether `dir` holds a validator's log: without one, a validator outside the genesis
    /// set must [`Node::join`].
    pub fn has_log(dir: &Path) -> bool {
        Wal::exists(dir)
    }

    fn open_with(
        dir: &Path,
        config: Config,
        app: A,
        replica: impl FnOnce(Config, Vec<Record>, ExecutedState) -> Result<Replica, NodeError>,
    ) -> Result<Node<A>, NodeError> {
        let lock = lock_dir(dir)?;
        let (wal, bytes) = Wal::open(dir, WalOptions::for_messages(config.max_message_bytes))?;
        let mut records = Vec::with_capacity(bytes.len());
        for (index, record) in bytes.iter().enumerate() {
            let record = Record::decode(record).map_err(|error| NodeError::BadRecord {
                dir: dir.to_path_buf(),
                index,
                error,
            })?;
            records.push(record);
        }
        let (mut store, executed) = Store::open(dir)?;
        // Before anything is signed: records of another chain would not verify here.
        store.bind_chain(&config.chain_id)?;
        let max_message_bytes = config.max_message_bytes;
        let chain = config.chain_id;
        let retained_batches = config.retained_batches as u64;
        let replica = replica(config, records, executed)?;
        let output_set = replica.validators().clone();
        Ok(Node {
            _lock: lock,
            output_set,
            members: None,
            replica,
            wal,
            store,
            app,
            stats: NodeStats::default(),
            evidence: Vec::new(),
            retained_batches,
            store_synced_at: None,
            round: None,
            arrivals: BTreeMap::new(),
            evidence_seen: BTreeMap::new(),
            samples: Samples::default(),
            max_message_bytes,
            chain,
            attested_by: HashMap::new(),
            state_digest: None,
            progress: (0, 0),
            rollback_check: true,
            snapshots: None,
            to_record: Vec::new(),
            snapshots_pending: 0,
            stopped_cleanly: false,
            compact_due: false,
            deferred: VecDeque::new(),
            compaction: None,
        })
    }

    /// The validators the transport is to admit and link to, if they changed since the last
    /// call: the set of the node's epoch, and the validators a scheduled change adds (they
    /// fetch their state from this set before the boundary is reached).
    pub fn members_changed(&mut self) -> Option<(Vec<PublicKey>, Vec<PublicKey>)> {
        let replica = &self.replica;
        let set: Vec<PublicKey> = replica.validators().public_keys().collect();
        let newcomers = replica
            .scheduled_epoch()
            .map(|next| {
                next.validators
                    .iter()
                    .filter(|key| !set.contains(key))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        let members = (set, newcomers);
        if self.members.as_ref() == Some(&members) {
            return None;
        }
        self.members = Some(members.clone());
        Some(members)
    }

    /// Bytes from a peer the transport authenticated as `from`. Rejections are counted in
    /// the core's metrics and returned for logging; the node goes on.
    pub fn handle_message(
        &mut self,
        now: u64,
        from: &PublicKey,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.replica.handle_message(now, from, bytes)
    }

    /// A request from a client connected to this node.
    pub fn submit(&mut self, now: u64, request: Request) -> Result<(), Error> {
        self.submit_all(now, vec![request]).pop().unwrap_or(Ok(()))
    }

    /// Requests from clients connected to this node, all arrived by `now`: as [`Node::submit`]
    /// for each, with a backup's arrival checks made in one batch
    /// ([`pbft_core::Replica::submit_all`]). One verdict per request, in order.
    pub fn submit_all(&mut self, now: u64, requests: Vec<Request>) -> Vec<Result<(), Error>> {
        let keys: Vec<_> = requests
            .iter()
            .map(|r| {
                (
                    r.client,
                    r.client_seq,
                    r.attestation.as_ref().map(|a| a.gateway),
                )
            })
            .collect();
        let verdicts = self.replica.submit_all(now, requests);
        for ((client, client_seq, gateway), verdict) in keys.into_iter().zip(&verdicts) {
            match (verdict, gateway) {
                (Ok(()), _) if self.arrivals.len() < TIMED_REQUESTS => {
                    self.arrivals.entry((client, client_seq)).or_insert(now);
                }
                // A refused attested request's signed refusal goes back through its gateway
                // when the client has no route here of its own (no execution set one yet).
                (Err(_), Some(gateway)) if self.attested_by.len() < ATTESTED_BY_KEPT => {
                    self.attested_by.entry(client).or_insert(gateway);
                }
                _ => {}
            }
        }
        verdicts
    }

    /// Turns rollback protection off ([`crate::config::NodeConfig::unsafe_skip_rollback_check`]),
    /// with a warning in the log.
    pub fn skip_rollback_check(&mut self) {
        self.rollback_check = false;
        tracing::warn!(
            "rollback protection is off (unsafe_skip_rollback_check): if this data dir is an old copy, or this key runs elsewhere too, this node can sign conflicting statements and get its key convicted"
        );
    }

    /// Starts rollback protection ([`Replica::check_for_rollback`]): call once, before any
    /// input. Its outcome is logged when it settles.
    pub fn check_for_rollback(&mut self, now: u64) {
        if !self.rollback_check {
            return;
        }
        self.replica.check_for_rollback(now);
        if self.replica.is_recovering() {
            tracing::info!(
                "rollback protection: asking the other validators what they hold signed by this key before signing anything"
            );
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: u64) {
        self.replica.handle_timeout(now);
    }

    /// When the node next wants [`Node::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<u64> {
        self.replica.poll_timeout()
    }

    /// Runs everything the inputs so far produced, makes it durable (the log, then the
    /// application store: with a sync thread its durable commit is started, and deliveries
    /// and installs wait for it), and returns what to send.
    pub fn flush(&mut self, now: u64) -> Result<Vec<Transmit>, NodeError> {
        let mut transmits = Vec::new();
        let mut round = self.round.take();
        let overdue =
            |synced: Option<u64>, ms: u64| synced.is_none_or(|at| now >= at.saturating_add(ms));
        // Until the store's sync thread reports, nothing writes the store (no snapshot is
        // outstanding either: a sync starts only with none, and only an execution starts one).
        let syncing = self.store.syncing();
        if !syncing {
            // What the core emitted during the sync came before anything it emits now.
            while let Some(output) = self.deferred.pop_front() {
                round = self.carry_out(now, output, round, &mut transmits)?;
            }
        }
        loop {
            if !self.to_record.is_empty() && !syncing {
                // States signed off the node's thread, kept so peers can fetch them after a
                // restart (as `execute` keeps those signed on it).
                let mut open = match round.take() {
                    Some(open) => open,
                    None => self.store.begin()?,
                };
                for (seq, record) in self.to_record.drain(..) {
                    open.record_checkpoint_encoded(seq, &record)?;
                }
                round = Some(open);
            }
            while let Some(output) = self.replica.poll_output() {
                self.compact_due |= matches!(output, Output::Persist(Record::Stable(_)));
                if syncing && matches!(output, Output::Deliver(_) | Output::Install(_)) {
                    self.defer(output);
                    continue;
                }
                round = self.carry_out(now, output, round, &mut transmits)?;
            }
            // The store is made durable only with no snapshot outstanding: past a checkpoint
            // whose vote is not in the log, a restart could never sign that checkpoint (its
            // state is gone), and with too few votes the window would not move again. It waits
            // (the log's redo records cover it) unless it waited too long already.
            if self.snapshots_pending == 0 || !overdue(self.store_synced_at, 4 * STORE_SYNC_MS) {
                break;
            }
            self.wait_for_snapshots(now)?;
        }
        let executed = self.replica.executed_seq();
        if executed != self.progress.0 {
            self.progress = (executed, now);
        }
        let settled = self.snapshots_pending == 0 && !syncing;
        let compact = self.compact_due && settled;
        if compact {
            self.compact_due = false;
            // The store keeps the batches peers a little behind may still ask for.
            let mut open = match round.take() {
                Some(open) => open,
                None => self.store.begin()?,
            };
            let stable = self.replica.stable_checkpoint().seq;
            open.prune_batches(stable.saturating_sub(self.retained_batches))?;
            open.prune_checkpoints(stable)?;
            round = Some(open);
        }
        // The log first: its records (the redo records of this round's executions among
        // them) are what a reply may rely on, so one fsync covers every message of the round.
        if self.wal.pending_bytes() > 0 {
            let started = Instant::now();
            self.wal.sync()?;
            Samples::push(
                &mut self.samples.sync_seconds,
                started.elapsed().as_secs_f64(),
            );
        }
        // Then the store, after the log so it never says more was executed than the log can
        // vouch for: visible now, durable only before the log is compacted (or when it has
        // lagged a while), since until then the log's redo records replay what it lacks.
        let durable = settled && (compact || overdue(self.store_synced_at, STORE_SYNC_MS));
        if !durable {
            self.round = round;
            return Ok(transmits);
        }
        self.store_synced_at = Some(now);
        if self.store.has_sync_thread() {
            // The records a restart needs as of now: the log becomes them, and what is logged
            // from now on, once the store is durable as of now.
            let records = compact.then(|| self.live_records());
            let started = Instant::now();
            if self.store.start_sync(round)? {
                self.compaction = records.map(|records| Compaction {
                    records,
                    tail_bytes: 0,
                });
                return Ok(transmits);
            }
            // Nothing was unsynced, or the thread is gone and the commit was made here.
            if self.store.synced_now() {
                self.synced(started.elapsed().as_secs_f64());
            }
        } else {
            let started = Instant::now();
            match round {
                Some(round) => self.store.commit(round)?,
                None => self.store.sync()?,
            }
            if self.store.synced_now() {
                self.synced(started.elapsed().as_secs_f64());
            }
        }
        if compact {
            // Everything below the stable checkpoint is final, and the store is durable: the
            // log keeps what a restart needs, written and synced before the old segments go.
            let live = self.live_records();
            self.compact_log(&live)?;
        }
        Ok(transmits)
    }

    /// Keeps a delivery or an install for after the store's sync. An install voids every
    /// delivery not executed yet (the `Install` contract: the core hands out the next one
    /// against the installed state) and replaces an earlier install's state, so what waits
    /// is at most one install and the one delivery the core handed out after it.
    fn defer(&mut self, output: Output) {
        if matches!(output, Output::Install(_)) {
            for void in self.deferred.drain(..) {
                if matches!(void, Output::Deliver(_)) {
                    self.stats.void_deliveries += 1;
                }
            }
        }
        self.deferred.push_back(output);
    }

    /// Carries out one output of the core, in order, inside the round's store transaction
    /// (opened on the first write); returns the round still open.
    fn carry_out(
        &mut self,
        now: u64,
        output: Output,
        round: Option<Round>,
        transmits: &mut Vec<Transmit>,
    ) -> Result<Option<Round>, NodeError> {
        match output {
            Output::Persist(record) => self.log(&record)?,
            Output::Send { to, bytes } => {
                let via = match to {
                    Destination::Client(client) => self.attested_by.get(&client).copied(),
                    _ => None,
                };
                // The transport's links are to keys: an id is a position in the set of the
                // epoch the output was made in.
                let to = match to {
                    Destination::Validator(id) => match self.output_set.key(id) {
                        Some(key) => Target::Validator(key.public_key()),
                        None => return Ok(round),
                    },
                    Destination::Outside(key) => Target::Validator(key),
                    Destination::AllValidators => Target::AllValidators,
                    Destination::Client(key) => Target::Client(key),
                };
                transmits.push(Transmit { to, bytes, via });
            }
            Output::EpochStarted(change) => {
                let removed: Vec<String> = self
                    .output_set
                    .public_keys()
                    .filter(|key| !change.validators().contains(key))
                    .map(|key| key.to_string())
                    .collect();
                self.output_set = change
                    .validator_set()
                    .map_err(|err| NodeError::UnhandledOutput(format!("epoch change: {err}")))?;
                tracing::warn!(
                    epoch = change.epoch(),
                    boundary = change.boundary(),
                    validators = change.validators().len(),
                    removed = ?removed,
                    "entered a new epoch"
                );
                if self.replica.is_retired() {
                    tracing::error!(
                        epoch = change.epoch(),
                        "this validator was removed from the validator set; it takes no more part"
                    );
                }
            }
            Output::Deliver(delivery) => {
                if delivery.seq != self.replica.executed_seq() + 1 {
                    // An install the core emitted after it (in the same round) replaced the
                    // state it was ordered against: void, by the `Install` contract.
                    self.stats.void_deliveries += 1;
                    return Ok(round);
                }
                let open = match round {
                    Some(open) => open,
                    None => self.store.begin()?,
                };
                return self.execute(now, open, delivery);
            }
            Output::Install(install) => {
                let open = match round {
                    Some(open) => open,
                    None => self.store.begin()?,
                };
                return self.install(open, &install).map(Some);
            }
            Output::Evidence(evidence) => {
                self.stats.evidence += 1;
                if self.evidence_seen.len() < TIMED_REQUESTS {
                    let offender = (evidence.epoch, evidence.offender().0);
                    self.evidence_seen.entry(offender).or_insert(now);
                }
                if self.evidence.len() < EVIDENCE_KEPT {
                    self.evidence.push(evidence);
                }
            }
            Output::StateDiverged { seq, own, stable } => {
                // The core stops delivering and fetches the quorum's state, which comes as an
                // `Install`: the operator is told, nothing else is to do here.
                tracing::error!(
                    seq,
                    %own,
                    %stable,
                    "this node's state diverged from the stable checkpoint: fetching the quorum's state"
                );
            }
            Output::Recovered(report) => log_recovery(&report),
            other => return Err(NodeError::UnhandledOutput(format!("{other:?}"))),
        }
        Ok(round)
    }

    /// Executes a delivery in `round` and reports it to the replica. At a checkpoint the
    /// round is committed (not yet durably) so the snapshot reads it, and the next output
    /// opens a new one; otherwise the round goes on.
    fn execute(
        &mut self,
        now: u64,
        mut round: Round,
        delivery: Delivery,
    ) -> Result<Option<Round>, NodeError> {
        for request in &delivery.batch.requests {
            if let Some(arrived) = self.arrivals.remove(&(request.client, request.client_seq)) {
                Samples::push(&mut self.samples.commit_ms, now.saturating_sub(arrived));
            }
        }
        Samples::push(&mut self.samples.batch_sizes, delivery.batch.requests.len());
        for evidence in &delivery.batch.evidence {
            if let Some(seen) = self
                .evidence_seen
                .remove(&(evidence.epoch, evidence.offender().0))
            {
                let ms = now.saturating_sub(seen);
                Samples::push(&mut self.samples.evidence_commit_ms, ms);
            }
            tracing::warn!(
                seq = delivery.seq,
                offender = evidence.offender().0,
                phase = ?evidence.first.phase,
                view = evidence.first.view,
                at = evidence.first.seq,
                "committed evidence: a validator signed two conflicting votes"
            );
        }
        if self.attested_by.len() > ATTESTED_BY_KEPT {
            self.attested_by.clear();
        }
        // Reconfigurations the replica decided are answered too, through their gateway.
        let decided = delivery.decided.iter().map(|(index, _)| index);
        for &index in delivery.execute.iter().chain(decided) {
            let Some(request) = delivery.batch.requests.get(index as usize) else {
                continue;
            };
            match &request.attestation {
                Some(attestation) => self.attested_by.insert(request.client, attestation.gateway),
                None => self.attested_by.remove(&request.client),
            };
        }
        let ops: Vec<&[u8]> = delivery
            .execute
            .iter()
            .filter_map(|&index| delivery.batch.requests.get(index as usize))
            .map(|request| &request.op[..])
            .collect();
        let path = self.store.path().to_path_buf();
        let app_error = |source| NodeError::App {
            path: path.clone(),
            source,
        };
        if !delivery.batch.evidence.is_empty() {
            let evidence = &delivery.batch.evidence;
            self.app
                .convict(round.tx(), delivery.seq, evidence)
                .map_err(app_error)?;
        }
        let results = self.app.execute(round.tx(), &ops).map_err(app_error)?;
        round.record_delivery(&delivery, &results)?;
        self.stats.batches_executed += 1;
        self.stats.ops_executed += results.len() as u64;
        if !delivery.checkpoint {
            self.replica
                .executed(now, delivery.seq, results, None)
                .map_err(NodeError::Core)?;
            return Ok(Some(round));
        }
        let started = Instant::now();
        self.store.commit_unsynced(round)?;
        let read = self.store.read()?;
        let mut round = self.store.begin()?;
        if let Some(snapshots) = &self.snapshots {
            let job = self
                .replica
                .executed_deferring(now, delivery.seq, results)
                .map_err(NodeError::Core)?;
            if let Some(job) = job {
                snapshots.submit(read, job);
                self.snapshots_pending += 1;
            }
            if self.snapshots_pending > MAX_SNAPSHOTS_PENDING {
                // A thread slower than the checkpoints (a replica the quorum does not wait
                // for executes on) would queue read transactions, which pin their pages,
                // and client tables without end: wait for the oldest instead.
                self.wait_for_snapshot(now)?;
            }
        } else {
            let snapshot = self.app.snapshot(&read).map_err(app_error)?;
            self.replica
                .executed(now, delivery.seq, results, Some(snapshot))
                .map_err(NodeError::Core)?;
            // The state the replica signed there, kept so peers can fetch it after a restart.
            if let Some(state) = self.replica.checkpoint_state(delivery.seq) {
                round.record_checkpoint(&state)?;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        Samples::push(&mut self.samples.checkpoint_seconds, seconds);
        Ok(Some(round))
    }

    /// Replaces the application's state (and the store's exactly-once table) in `round`.
    fn install(&mut self, mut round: Round, install: &Install) -> Result<Round, NodeError> {
        match self.app.install(round.tx(), &install.snapshot) {
            Ok(()) => {}
            Err(AppError::Snapshot(err)) => return Err(NodeError::Snapshot(err)),
            Err(source) => {
                return Err(NodeError::App {
                    path: self.store.path().to_path_buf(),
                    source,
                });
            }
        }
        round.record_install(install)?;
        if let Some(state) = self.replica.checkpoint_state(install.seq) {
            round.record_checkpoint(&state)?;
        }
        self.stats.installs += 1;
        Ok(round)
    }

    /// Makes the rounds written since the last commit visible to reads (not durable: the
    /// log's redo records cover them).
    fn publish(&mut self) -> Result<(), NodeError> {
        if let Some(round) = self.round.take() {
            self.store.commit_unsynced(round)?;
        }
        Ok(())
    }

    /// Makes the application store durable as of everything executed (a clean stop: the
    /// next start replays from the log only what waited for a sync in flight), unless a snapshot is still
    /// outstanding ([`Node::wait_for_snapshots`] and a flush first).
    pub fn sync_store(&mut self) -> Result<(), NodeError> {
        // What waits for a sync in flight stays unexecuted: the log replays it.
        self.wait_for_sync()?;
        if self.snapshots_pending > 0 || !self.to_record.is_empty() {
            // Not past a checkpoint whose vote is not logged yet (see `flush`, which logs a
            // finished snapshot's vote and records its state): the log's redo records replay
            // the rest.
            return Ok(());
        }
        match self.round.take() {
            Some(round) => self.store.commit(round)?,
            None => self.store.sync()?,
        }
        self.stopped_cleanly = true;
        Ok(())
    }

    /// A read of the application store as of everything executed so far.
    pub fn read(&mut self) -> Result<ReadTransaction, NodeError> {
        self.publish()?;
        Ok(self.store.read()?)
    }

    /// Where the node is, with a digest of its application state. The digest hashes the
    /// whole state, so it is taken again only when execution moved on and the last one is
    /// at least [`STATE_DIGEST_EVERY_MS`] old (`now` is the driver's clock).
    pub fn status(&mut self, now: u64) -> NodeStatus {
        let executed = self.replica.executed_seq();
        let stale = match self.state_digest {
            Some((seq, _, at)) => seq != executed && now >= at + STATE_DIGEST_EVERY_MS,
            None => true,
        };
        if stale {
            // The seq comes from the read that gives the state: the replica's executed seq
            // moves at an install before the store's state does (at the next flush, or after
            // the store's sync). A store that cannot be read now leaves the last digest: the
            // next round that writes will stop the node with the error.
            let taken = self.read().ok().and_then(|read| {
                let seq = self.store.executed_in(&read).ok()?;
                Some((seq, self.app.snapshot(&read).ok()?))
            });
            if let Some((seq, snapshot)) = taken {
                let digest = Hasher::new(b"pbft/v1/app-state").bytes(&snapshot).finish();
                self.state_digest = Some((seq, digest, now));
            }
        }
        let (state_seq, state, _) = self.state_digest.unwrap_or_default();
        let set = self.replica.validators();
        NodeStatus {
            id: u32::from(self.replica.id().0),
            epoch: set.epoch(),
            validators: set.len() as u32,
            view: self.replica.view(),
            executed,
            stable: self.replica.stable_checkpoint().seq,
            state_seq,
            state,
            primary: u32::from(set.primary(self.replica.view()).0),
            in_view: self.replica.in_view(),
            retired: self.replica.is_retired(),
            recovering: self.replica.is_recovering(),
            peers_connected: 0,
            waiting: !self.replica.is_idle(),
            since_commit_ms: now.saturating_sub(self.progress.1),
        }
    }

    /// The QC and inclusion proof of the request with digest `request` committed at `seq`,
    /// if this node's store still holds that batch (it keeps them from the stable checkpoint
    /// minus `retained_batches` on, across restarts).
    pub fn proof(&mut self, seq: u64, request: &Digest) -> Option<ProofBundle> {
        self.publish().ok()?;
        let pbft_core::Committed { batch, certificate } = self.store.committed(seq).ok()??;
        let chain = certificate.chain_id;
        let index = batch
            .requests
            .iter()
            .position(|r| r.digest(&chain) == *request)?;
        // The changes up to the QC's epoch, and the one that ended it if any (the QC must be
        // at or below its boundary): a verifier holding the genesis set follows them.
        let epochs = self
            .replica
            .epoch_changes()
            .iter()
            .take_while(|change| change.state.epoch <= certificate.epoch)
            .cloned()
            .collect();
        Some(ProofBundle {
            request: batch.requests.get(index)?.clone(),
            proof: batch.prove(&chain, index)?,
            certificate,
            epochs,
        })
    }

    /// Takes the timings measured since the last call.
    pub fn take_samples(&mut self) -> Samples {
        std::mem::take(&mut self.samples)
    }

    /// The network the node is in.
    pub fn chain(&self) -> pbft_core::ChainId {
        self.chain
    }

    /// Whether `key` is a gateway whose attestations this node takes in its epoch
    /// ([`Replica::attesting_gateways`]).
    pub fn attests(&self, key: &PublicKey) -> bool {
        self.replica.attesting_gateways().contains(key)
    }

    /// The largest consensus message the node accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The largest client frame the node accepts ([`crate::wire::max_client_frame`]).
    pub fn max_client_frame(&self) -> usize {
        crate::wire::max_client_frame(self.replica.config())
    }

    /// The replica (view, watermarks, metrics).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Takes checkpoint snapshots on a thread of their own ([`Snapshots`]), which reads
    /// them with a copy of the application: at a checkpoint the node's thread only commits
    /// its round and hands the state over, and goes on executing. Each finished snapshot
    /// comes back through [`Node::finished_snapshots`], for [`Node::snapshot_finished`].
    ///
    /// # Errors
    ///
    /// The thread cannot be spawned.
    pub fn snapshots_on_thread(&mut self) -> std::io::Result<()>
    where
        A: Clone + Send + 'static,
    {
        self.snapshots = Some(Snapshots::start(self.app.clone())?);
        Ok(())
    }

    /// Runs the replica's large batch signature checks on `pool`
    /// ([`Replica::set_check_pool`]).
    pub fn check_signatures_on(&mut self, pool: Box<dyn CheckPool>) {
        self.replica.set_check_pool(pool);
    }

    /// The core's counters.
    pub fn metrics(&self) -> &Metrics {
        self.replica.metrics()
    }

    /// The driver's counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// The log's counters (appends, syncs, bytes).
    pub fn wal_stats(&self) -> crate::wal::WalStats {
        self.wal.stats()
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The application store, as of the last commit (see [`Node::read`] for a read of
    /// everything executed).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Entries in the application's state.
    pub fn entries(&mut self) -> Result<u64, NodeError> {
        let read = self.read()?;
        self.app.entries(&read).map_err(|source| NodeError::App {
            path: self.store.path().to_path_buf(),
            source,
        })
    }

    /// Takes the evidence collected so far (at most a bounded number are kept).
    pub fn take_evidence(&mut self) -> Vec<Evidence> {
        std::mem::take(&mut self.evidence)
    }
}

/// Every vote recorded in the log in `dir`, to audit a stopped node for double signing: its
/// own, and the pre-prepares it accepted (each signed by the primary of its view, this node
/// when it led).
pub fn logged_votes(dir: &Path) -> Result<Vec<Vote>, NodeError> {
    let _lock = lock_dir(dir)?;
    let (_, records) = Wal::open(dir, WalOptions::default())?;
    let mut votes = Vec::new();
    for (index, bytes) in records.iter().enumerate() {
        match Record::decode(bytes) {
            Ok(Record::Signed(vote)) => votes.push(vote),
            Ok(Record::Accepted(vote, _)) => votes.push(vote),
            Ok(_) => {}
            Err(error) => {
                return Err(NodeError::BadRecord {
                    dir: dir.to_path_buf(),
                    index,
                    error,
                });
            }
        }
    }
    Ok(votes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvStore;
    use pbft_core::Request;
    use pbft_core::{Batch, ChainId, CommitPath, QuorumCertificate};

    /// A delivery of the empty batch at `seq`, under a QC no one signed.
    fn empty_delivery(chain: ChainId, seq: u64) -> Delivery {
        Delivery {
            seq,
            batch: Batch::default(),
            certificate: QuorumCertificate {
                chain_id: chain,
                epoch: 0,
                view: 0,
                seq,
                digest: Batch::default().digest(&chain),
                path: CommitPath::ThreePhase,
                signatures: vec![],
            },
            execute: vec![],
            decided: vec![],
            checkpoint: false,
            forgotten: vec![],
            client_floor: 0,
        }
    }

    #[test]
    fn deliveries_wait_for_a_sync_on_the_thread_and_a_crash_then_loses_none() {
        // One validator, a checkpoint every 2 seqs: seq 2's stable checkpoint compacts the
        // log while seq 3 waits for the store's sync.
        let dir = tempfile::tempdir().unwrap();
        let key = Keypair::from_seed(&[6; 32]);
        let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
        let chain = ChainId::from_name("node-sync");
        let mut config = Config::new(chain);
        config.checkpoint_interval = 2;
        let open = || {
            let key = Keypair::from_seed(&[6; 32]);
            Node::open(dir.path(), config.clone(), set.clone(), key, KvStore).unwrap()
        };
        let client = Keypair::from_seed(&[7; 32]);
        let put = |n: u64| {
            let op = crate::kv::Op::Put {
                key: format!("key-{n}").into_bytes(),
                value: b"v".to_vec(),
            };
            Request::new(&chain, &client, n, op.encode())
        };
        let write = |node: &mut Node<KvStore>, n: u64| {
            let now = n * 10;
            node.submit(now, put(n)).unwrap();
            node.handle_timeout(now + 5);
            node.flush(now + 5).unwrap();
        };
        let mut node = open();
        node.syncs_on_thread().unwrap();

        // The first flush makes the store durable at once, on the thread.
        write(&mut node, 1);
        assert_eq!(node.replica().executed_seq(), 1);
        assert!(node.store().syncing());
        node.wait_for_sync().unwrap();
        assert_eq!(node.stats().store_commits, 1);

        // Seq 2 is a stable checkpoint: the store syncs for the log's compaction.
        write(&mut node, 2);
        assert_eq!(node.replica().executed_seq(), 2);
        assert!(node.store().syncing());
        assert_eq!(
            node.stats().compactions,
            0,
            "not before the store is durable"
        );

        // Seq 3 commits meanwhile: logged, not executed.
        write(&mut node, 3);
        assert_eq!(node.replica().executed_seq(), 2, "seq 3 waits for the sync");
        assert_eq!(node.deferred.len(), 1);
        node.wait_for_sync().unwrap();
        assert_eq!(node.stats().compactions, 1);

        // Killed before the next flush: seq 3 is in no store, only in the compacted log.
        drop(node);
        let mut node = open();
        node.handle_timeout(36);
        node.flush(36).unwrap();
        assert_eq!(node.replica().executed_seq(), 3, "the log replays seq 3");
        let read = node.read().unwrap();
        for n in 1..=3 {
            let value = KvStore::get(&read, format!("key-{n}").as_bytes()).unwrap();
            assert_eq!(value.as_deref(), Some(&b"v"[..]), "key-{n} is there");
        }
        drop(read);

        // And a node that goes on executes what waited, in order, at its next flush (seq 4
        // is a stable checkpoint: its compaction syncs the store, well within a second).
        node.syncs_on_thread().unwrap();
        write(&mut node, 4);
        assert!(node.store().syncing());
        write(&mut node, 5);
        assert_eq!(node.replica().executed_seq(), 4);
        node.wait_for_sync().unwrap();
        node.flush(60).unwrap();
        assert_eq!(node.replica().executed_seq(), 5);
        assert!(node.deferred.is_empty());
    }

    #[test]
    fn an_install_waiting_for_a_sync_voids_the_delivery_before_it() {
        // Repair while the store syncs: the core hands out seq 5 on a diverged state, installs
        // the quorum's checkpoint 4 and hands out seq 5 again. The first is void.
        let dir = tempfile::tempdir().unwrap();
        let key = Keypair::from_seed(&[8; 32]);
        let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
        let chain = ChainId::from_name("node-defer");
        let mut node = Node::open(dir.path(), Config::new(chain), set, key, KvStore).unwrap();
        let delivery = |seq| Output::Deliver(empty_delivery(chain, seq));
        let install = |seq| {
            Output::Install(Install {
                seq,
                snapshot: vec![],
                clients: vec![],
                client_floor: 0,
            })
        };
        node.defer(delivery(5));
        node.defer(install(4));
        node.defer(delivery(5));
        assert_eq!(node.stats().void_deliveries, 1);
        assert_eq!(node.deferred, [install(4), delivery(5)]);
        // A later install replaces the earlier one and voids what came after it.
        node.defer(install(8));
        assert_eq!(node.stats().void_deliveries, 2);
        assert_eq!(node.deferred, [install(8)]);
    }

    #[test]
    fn a_delivery_an_install_overtook_is_void_and_the_node_goes_on() {
        // The core emits a delivery for executed + 1, then (in the same round: a peer's last
        // state chunk) an install that moves executed past it. By the time the host reaches
        // the delivery, the core's executed seq is the install's, so the delivery is void.
        let dir = tempfile::tempdir().unwrap();
        let key = Keypair::from_seed(&[5; 32]);
        let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
        let chain = ChainId::from_name("node-unit");
        let mut node = Node::open(dir.path(), Config::new(chain), set, key, KvStore).unwrap();
        let stale = empty_delivery(chain, 7);
        let mut transmits = Vec::new();
        let round = node
            .carry_out(1, Output::Deliver(stale), None, &mut transmits)
            .expect("a void delivery does not stop the node");
        assert!(round.is_none(), "nothing executed, nothing to commit");
        assert_eq!(node.stats().void_deliveries, 1);
        assert_eq!(node.stats().batches_executed, 0);
        assert!(node.flush(2).is_ok());
    }
}
