//! What every transport does to start a validator before it opens a socket: raise its
//! descriptor limit and derive its connection limits from it, open the node from its data
//! dir, serve its metrics, and start the driver with a queue per peer.

use std::sync::Arc;
use std::thread::JoinHandle;

use pbft_core::{EpochChange, Keypair, ReplicaId};

use crate::checks::ThreadChecks;
use crate::config::NodeConfig;
use crate::driver::admission::ConnectionLimits;
use crate::driver::{self, Driver, Router};
use crate::kv::KvStore;
use crate::metrics::{self, NodeMetrics};
use crate::node::{Node, NodeError};
use crate::peers::{Peer, Peers};
use crate::serve::ServeLimits;

/// Extra bytes a client frame wraps around a consensus message: the largest frame a
/// transport accepts is the core's largest message plus this.
pub const CLIENT_FRAME_OVERHEAD: usize = 64;

/// Why a validator stopped with an error, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The node cannot start or failed (its log, its config).
    #[error("{0}")]
    Node(NodeError),
    /// The transport cannot be set up.
    #[error("{0}")]
    Transport(Box<dyn std::error::Error + Send + Sync>),
    /// The metrics endpoint cannot be bound.
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
    /// The node's thread panicked (nothing it signed after the panic left it).
    #[error("the node thread panicked")]
    Panicked,
    /// The threads that check signatures (`verify_threads`) cannot be started.
    #[error("signature check threads: {0}")]
    Threads(rayon::ThreadPoolBuildError),
    /// The thread that takes checkpoint snapshots cannot be started.
    #[error("checkpoint snapshot thread: {0}")]
    SnapshotThread(std::io::Error),
    /// The thread that makes the application store durable cannot be started.
    #[error("store sync thread: {0}")]
    SyncThread(std::io::Error),
}

/// A validator whose node runs on its thread, waiting for a transport.
pub struct Started {
    /// This validator's id.
    pub me: ReplicaId,
    /// Feeds the node.
    pub driver: Driver,
    /// The node's thread; it ends with the node's verdict.
    pub thread: JoinHandle<Result<(), NodeError>>,
    /// Where replies to clients go.
    pub router: Arc<Router>,
    /// The validators it admits and links to.
    pub peers: Arc<Peers>,
    /// The links to open: one for each peer whose address is known, now and as the set
    /// changes or addresses are learned ([`Peers`]).
    pub links: flume::Receiver<Peer>,
    /// The largest frame to send to a validator.
    pub max_frame: usize,
    /// What [`crate::serve::serve`] allows a connection.
    pub limits: ServeLimits,
}

impl Started {
    /// Stops a node whose transport could not start, after it made its log durable, and
    /// returns the transport's error.
    pub fn abandon(
        driver: &Driver,
        thread: JoinHandle<Result<(), NodeError>>,
        err: RunError,
    ) -> RunError {
        driver.shutdown();
        let _ = Started::finish(thread);
        err
    }

    /// Waits for the node's thread and turns its end into a result.
    pub fn finish(thread: JoinHandle<Result<(), NodeError>>) -> Result<(), RunError> {
        match thread.join() {
            Ok(result) => result.map_err(RunError::Node),
            Err(_) => Err(RunError::Panicked),
        }
    }
}

/// Opens the node `config` describes (restoring it from its log; a validator outside the
/// genesis set whose log is empty joins with `chain`, the epoch changes from genesis to one
/// whose set holds its key: [`Node::join`]), serves its metrics, and starts its driver.
pub fn start(config: &NodeConfig, chain: Option<Vec<EpochChange>>) -> Result<Started, RunError> {
    let keypair = Keypair::from_seed(&config.keypair.seed());
    let (core, genesis) = (config.core.clone(), config.validators.clone());
    let mut node = match chain {
        Some(chain) => Node::join(
            &config.data_dir,
            core,
            genesis,
            keypair,
            chain,
            KvStore::new(),
        ),
        None => Node::open(&config.data_dir, core, genesis, keypair, KvStore::new()),
    }
    .map_err(RunError::Node)?;
    if config.unsafe_skip_rollback_check {
        node.skip_rollback_check();
    }
    let me: ReplicaId = node.replica().id();
    // A checkpoint's snapshot (as long as the state) is read and hashed beside the node's
    // thread, which goes on ordering and executing.
    node.snapshots_on_thread()
        .map_err(RunError::SnapshotThread)?;
    // The store's durable commit (two fsyncs) too: only what writes the store waits for it.
    node.syncs_on_thread().map_err(RunError::SyncThread)?;
    if config.verify_threads > 1 {
        let checks = ThreadChecks::new(config.verify_threads).map_err(RunError::Threads)?;
        node.check_signatures_on(Box::new(checks));
    }
    // After the data dir's lock: a second node on the same dir says so, not "port in use".
    let metrics = Arc::new(NodeMetrics::new());
    if let Some(addr) = config.metrics {
        let bound = metrics::serve(addr, metrics.clone()).map_err(RunError::Metrics)?;
        tracing::info!(%bound, "metrics");
    }
    let entries = node.entries().map_err(RunError::Node)?;
    tracing::info!(
        id = me.0,
        // Covers the network's name and its agreed parameters: compare it across nodes.
        chain = ?config.core.chain_id.0,
        view = node.replica().view(),
        stable = node.replica().stable_checkpoint().seq,
        durable_seq = node.replica().executed_seq(),
        entries,
        "restored from {}",
        config.data_dir.display()
    );
    let max_frame = config.core.max_message_bytes + CLIENT_FRAME_OVERHEAD;
    let members = node.members_changed().unwrap_or_default();
    let (peers, links) = Peers::new(
        config.keypair.public_key(),
        members,
        config.known_addresses(),
        max_frame,
        metrics.clone(),
    );
    let router = Router::new(peers.clone(), config.compress_above, metrics);
    let (driver, thread) =
        driver::spawn(node, router.clone()).map_err(|err| RunError::Transport(Box::new(err)))?;
    Ok(Started {
        me,
        driver,
        thread,
        router,
        peers,
        links,
        max_frame,
        limits: ServeLimits::new(&config.core, max_frame),
    })
}

/// What a transport spends descriptors on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sockets {
    /// One per connection (TCP): the connection limits must fit the descriptor limit.
    PerConnection,
    /// One for all connections (QUIC's UDP socket): the limits are the defaults.
    Shared,
}

/// Raises this process's soft limit on open descriptors (`RLIMIT_NOFILE`) to its hard limit,
/// the most an unprivileged process may (most systems start processes at a soft 1,024,
/// below what a node serving thousands of TCP connections needs). Returns the soft limit in
/// force after, `None` if unlimited. If raising fails, the old soft limit stays and is
/// returned.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum,
            // macOS refuses a soft limit above OPEN_MAX even under a higher hard limit.
            Err(err) => tracing::warn!(%err, "could not raise the descriptor limit"),
        }
    }
    limit.current
}

/// The connection limits of a node of `validators` validators: raises the descriptor limit
/// ([`raise_descriptor_limit`]) and, when each connection costs a descriptor, fits the
/// defaults into it ([`ConnectionLimits::within_descriptors`]). Logs what it got.
pub fn connection_limits(validators: usize, sockets: Sockets) -> ConnectionLimits {
    let descriptors = raise_descriptor_limit();
    let limits = match (sockets, descriptors) {
        (Sockets::PerConnection, Some(descriptors)) => {
            ConnectionLimits::default().within_descriptors(descriptors, validators)
        }
        (Sockets::PerConnection, None) | (Sockets::Shared, _) => ConnectionLimits::default(),
    };
    let descriptors = descriptors.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    tracing::info!(
        descriptors = %descriptors,
        handshakes = limits.handshakes,
        handshakes_per_address = limits.handshakes_per_address,
        per_validator = limits.per_validator,
        clients = limits.clients,
        "connection limits"
    );
    if sockets == Sockets::PerConnection && limits.clients == 0 {
        tracing::warn!(
            descriptors = %descriptors,
            needed = ConnectionLimits::default().descriptors(validators),
            "too few descriptors to admit any client; raise the hard limit (ulimit -Hn)"
        );
    }
    limits
}
