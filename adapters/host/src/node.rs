//! The node driver: a replica, its write-ahead log and its application, turned into actions
//! a transport carries out. Runtime-agnostic: the QUIC and TCP adapters own sockets, tasks
//! and timers, and call into this.
//!
//! The transport feeds every input that is ready (`handle_message`, `submit`,
//! `handle_timeout`), then calls [`Node::flush`]: it runs the core's outputs — records go to the
//! log, deliveries execute on the application and report back, an installed state replaces the
//! application's — makes the log durable with one `fdatasync` for all of it (group commit), and
//! only then returns the messages to send. Nothing signed leaves before its record is durable.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pbft_core::{
    Batch, Config, ConfigError, Destination, Digest, Error, Evidence, Hasher, Keypair, Metrics,
    Output, PublicKey, QuorumCertificate, Record, Replica, Request, ValidatorSet, Vote,
};

use crate::kv::{KvStore, SnapshotError};
use crate::wal::{Wal, WalError, WalOptions};
use crate::wire::{NodeStatus, ProofBundle};

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

/// Committed batches kept to answer proof queries: clients ask right after their reply.
const PROOFS_KEPT: usize = 64;

/// Client requests whose arrival time is kept to measure commit latency; beyond it new ones
/// are not timed (a flood of requests cannot grow the map).
const TIMED_REQUESTS: usize = 4096;

/// Least time between two digests of the whole application state for status queries, ms.
pub const STATE_DIGEST_EVERY_MS: u64 = 1000;

/// Latency samples kept between two [`Node::take_samples`].
const SAMPLES_KEPT: usize = 4096;

/// Timings a node measured since they were last taken, for the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// Milliseconds from a request's arrival at this node to the delivery of its batch.
    pub commit_ms: Vec<u64>,
    /// Seconds each log sync took.
    pub sync_seconds: Vec<f64>,
    /// Requests in each delivered batch.
    pub batch_sizes: Vec<usize>,
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
    wal: Wal,
    app: A,
    stats: NodeStats,
    evidence: Vec<Evidence>,
    /// The last committed batches with their QCs, for proof queries.
    committed: VecDeque<(QuorumCertificate, Batch)>,
    /// Arrival time of requests submitted here, by (client, number).
    arrivals: BTreeMap<(PublicKey, u64), u64>,
    samples: Samples,
    max_message_bytes: usize,
    chain: pbft_core::ChainId,
    /// The last state digest taken for a status query: (seq, digest, when).
    state_digest: Option<(u64, Digest, u64)>,
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
        let max_message_bytes = config.max_message_bytes;
        let chain = config.chain_id;
        let replica =
            Replica::restore(config, validators, keypair, records).map_err(NodeError::Config)?;
        Ok(Node {
            _lock: lock,
            replica,
            wal,
            app,
            stats: NodeStats::default(),
            evidence: Vec::new(),
            committed: VecDeque::new(),
            arrivals: BTreeMap::new(),
            samples: Samples::default(),
            max_message_bytes,
            chain,
            state_digest: None,
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
        let key = (request.client, request.client_seq);
        self.replica.submit(now, request)?;
        if self.arrivals.len() < TIMED_REQUESTS {
            self.arrivals.entry(key).or_insert(now);
        }
        Ok(())
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
                    for request in &delivery.batch.requests {
                        if let Some(arrived) =
                            self.arrivals.remove(&(request.client, request.client_seq))
                        {
                            Samples::push(&mut self.samples.commit_ms, now.saturating_sub(arrived));
                        }
                    }
                    Samples::push(&mut self.samples.batch_sizes, delivery.batch.requests.len());
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
                    if self.committed.len() == PROOFS_KEPT {
                        self.committed.pop_front();
                    }
                    self.committed
                        .push_back((delivery.certificate, delivery.batch));
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
        if self.wal.pending_bytes() > 0 {
            let started = Instant::now();
            self.wal.sync()?;
            Samples::push(
                &mut self.samples.sync_seconds,
                started.elapsed().as_secs_f64(),
            );
        }
        Ok(transmits)
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
            let digest = Hasher::new(b"pbft/v1/app-state")
                .bytes(&self.app.snapshot())
                .finish();
            self.state_digest = Some((executed, digest, now));
        }
        let (state_seq, state, _) = self.state_digest.unwrap_or_default();
        NodeStatus {
            id: u32::from(self.replica.id().0),
            view: self.replica.view(),
            executed,
            stable: self.replica.stable_checkpoint().seq,
            state_seq,
            state,
        }
    }

    /// The QC and inclusion proof of the request with digest `request` committed at `seq`,
    /// if this node still holds that batch.
    pub fn proof(&self, seq: u64, request: &Digest) -> Option<ProofBundle> {
        let (certificate, batch) = self.committed.iter().find(|(qc, _)| qc.seq == seq)?;
        let chain = certificate.chain_id;
        let index = batch
            .requests
            .iter()
            .position(|r| r.digest(&chain) == *request)?;
        Some(ProofBundle {
            certificate: certificate.clone(),
            request: batch.requests[index].clone(),
            proof: batch.prove(&chain, index)?,
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

    /// The largest consensus message the node accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
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

/// Every vote recorded in the log in `dir`, to audit a stopped node for double signing.
pub fn logged_votes(dir: &Path) -> Result<Vec<Vote>, NodeError> {
    let _lock = lock_dir(dir)?;
    let (_, records) = Wal::open(dir, WalOptions::default())?;
    let mut votes = Vec::new();
    for (index, bytes) in records.iter().enumerate() {
        match Record::decode(bytes) {
            Ok(Record::Signed(vote)) => votes.push(vote),
            Ok(_) => {}
            Err(_) => {
                return Err(NodeError::BadRecord {
                    dir: dir.to_path_buf(),
                    index,
                });
            }
        }
    }
    Ok(votes)
}
