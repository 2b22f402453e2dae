//! The node driver: a replica, its write-ahead log and its application, turned into actions
//! a transport carries out. Runtime-agnostic: the QUIC and TCP adapters own sockets, tasks
//! and timers, and call into this.
//!
//! The transport feeds every input that is ready (`handle_message`, `submit`,
//! `handle_timeout`), then calls [`Node::flush`]: it runs the core's outputs — records go to the
//! log, deliveries execute on the application and report back, an installed state replaces the
//! application's — makes the log durable with one `fdatasync` for all of it (group commit), and
//! only then returns the messages to send. Nothing signed leaves before its record is durable.

use std::fmt;
use std::path::{Path, PathBuf};

use pbft_core::{
    Config, ConfigError, Destination, Error, Evidence, Keypair, Metrics, Output, PublicKey, Record,
    Replica, Request, ValidatorSet,
};

use crate::kv::{KvStore, SnapshotError};
use crate::wal::{Wal, WalError, WalOptions};

/// What a node replicates. Execution must be deterministic, and a snapshot must be the same
/// bytes on every replica in the same state.
pub trait Application {
    /// Executes one operation and returns its result.
    fn execute(&mut self, op: &[u8]) -> Vec<u8>;
    /// The state's canonical bytes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot fetched from peers.
    fn install(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
}

impl Application for KvStore {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        KvStore::execute(self, op)
    }

    fn snapshot(&self) -> Vec<u8> {
        KvStore::snapshot(self)
    }

    fn install(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        *self = KvStore::restore(snapshot)?;
        Ok(())
    }
}

/// Why a node stopped or cannot start. Each is fatal: a node that cannot persist must not
/// sign.
#[derive(Debug)]
pub enum NodeError {
    /// The log failed.
    Wal(WalError),
    /// A record in the log does not decode (written by another version?).
    BadRecord {
        /// The log's directory.
        dir: PathBuf,
        /// Position of the record in the log.
        index: usize,
    },
    /// The replica cannot start with this config, set and key.
    Config(ConfigError),
    /// The core refused a report of this node's own execution: a bug in the driver.
    Core(Error),
    /// A state fetched from peers (and checked against their signed checkpoint) is not a
    /// snapshot this application can read.
    Snapshot(SnapshotError),
    /// Another process holds the data dir: two nodes on one log would sign twice.
    Locked(PathBuf),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Wal(err) => write!(f, "write-ahead log: {err}"),
            NodeError::BadRecord { dir, index } => {
                write!(f, "{}: record {index} is not a pbft record", dir.display())
            }
            NodeError::Config(err) => write!(f, "config: {err}"),
            NodeError::Core(err) => write!(f, "core refused the node's own execution: {err}"),
            NodeError::Snapshot(err) => write!(f, "installing a fetched state: {err}"),
            NodeError::Locked(dir) => {
                write!(f, "{} is in use by another process", dir.display())
            }
        }
    }
}

impl std::error::Error for NodeError {}

impl From<WalError> for NodeError {
    fn from(err: WalError) -> Self {
        NodeError::Wal(err)
    }
}

/// A message to put on the wire, now that what it carries is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Who receives it.
    pub to: Destination,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

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
}

/// Takes the exclusive lock on `dir/LOCK` (released when the process dies, however it dies).
fn lock_dir(dir: &Path) -> Result<std::fs::File, NodeError> {
    std::fs::create_dir_all(dir).map_err(|source| WalError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("LOCK");
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

/// A validator: replica, log and application.
pub struct Node<A> {
    /// Holds the data dir's lock for as long as the node lives.
    _lock: std::fs::File,
    replica: Replica,
    wal: Wal,
    app: A,
    stats: NodeStats,
    evidence: Vec<Evidence>,
}

impl<A: Application> Node<A> {
    /// Opens the log in `dir` (creating it), restores the replica from its records, and
    /// starts with `app` (empty: the replica catches up from its peers).
    pub fn open(
        dir: &Path,
        config: Config,
        validators: ValidatorSet,
        keypair: Keypair,
        app: A,
    ) -> Result<Node<A>, NodeError> {
        let lock = lock_dir(dir)?;
        let (wal, bytes) = Wal::open(dir, WalOptions::default())?;
        let mut records = Vec::with_capacity(bytes.len());
        for (index, record) in bytes.iter().enumerate() {
            let record = Record::decode(record).map_err(|_| NodeError::BadRecord {
                dir: dir.to_path_buf(),
                index,
            })?;
            records.push(record);
        }
        let replica =
            Replica::restore(config, validators, keypair, records).map_err(NodeError::Config)?;
        Ok(Node {
            _lock: lock,
            replica,
            wal,
            app,
            stats: NodeStats::default(),
            evidence: Vec::new(),
        })
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
        self.replica.submit(now, request)
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: u64) {
        self.replica.handle_timeout(now);
    }

    /// When the node next wants [`Node::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<u64> {
        self.replica.poll_timeout()
    }

    /// Runs everything the inputs so far produced, makes it durable with one sync, and returns
    /// what to send.
    pub fn flush(&mut self, now: u64) -> Result<Vec<Transmit>, NodeError> {
        let mut transmits = Vec::new();
        let mut compact = false;
        while let Some(output) = self.replica.poll_output() {
            match output {
                Output::Persist(record) => {
                    compact |= matches!(record, Record::Stable(_));
                    self.wal.append(&record.encode())?;
                }
                Output::Send { to, bytes } => transmits.push(Transmit { to, bytes }),
                Output::Deliver(delivery) => {
                    let mut results = Vec::with_capacity(delivery.execute.len());
                    for &index in &delivery.execute {
                        if let Some(request) = delivery.batch.requests.get(index as usize) {
                            results.push(self.app.execute(&request.op));
                        }
                    }
                    self.stats.batches_executed += 1;
                    self.stats.ops_executed += results.len() as u64;
                    let snapshot = delivery.checkpoint.then(|| self.app.snapshot());
                    self.replica
                        .executed(now, delivery.seq, results, snapshot)
                        .map_err(NodeError::Core)?;
                }
                Output::Install(install) => {
                    self.app
                        .install(&install.snapshot)
                        .map_err(NodeError::Snapshot)?;
                    self.stats.installs += 1;
                }
                Output::Evidence(evidence) => {
                    self.stats.evidence += 1;
                    if self.evidence.len() < EVIDENCE_KEPT {
                        self.evidence.push(evidence);
                    }
                }
            }
        }
        if compact {
            // Everything below the stable checkpoint is final: the log keeps what a restart
            // needs, written and synced before the old segments go.
            let live: Vec<Vec<u8>> = self
                .replica
                .durable_records()
                .iter()
                .map(Record::encode)
                .collect();
            self.wal.compact(&live)?;
            self.stats.compactions += 1;
        }
        self.wal.sync()?;
        Ok(transmits)
    }

    /// The replica (view, watermarks, metrics).
    pub fn replica(&self) -> &Replica {
        &self.replica
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

    /// Takes the evidence collected so far (at most a bounded number are kept).
    pub fn take_evidence(&mut self) -> Vec<Evidence> {
        std::mem::take(&mut self.evidence)
    }
}
