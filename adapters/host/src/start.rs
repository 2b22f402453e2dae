//! What every transport does to start a validator before it opens a socket: open the node
//! from its data dir, serve its metrics, and start the driver with a queue per peer.

use std::sync::Arc;
use std::thread::JoinHandle;

use std::net::SocketAddr;

use pbft_core::{Keypair, PublicKey, ReplicaId};

use crate::config::NodeConfig;
use crate::driver::{self, Driver, Router};
use crate::kv::KvStore;
use crate::metrics::{self, NodeMetrics};
use crate::node::{Node, NodeError};
use crate::queue::Frames;
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
}

/// Another validator, as a transport's link to it needs it.
pub struct Peer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The key it must prove.
    pub key: PublicKey,
    /// The frames for it.
    pub queue: Frames,
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
    /// Every other validator.
    pub peers: Vec<Peer>,
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

/// Opens the node `config` describes (restoring it from its log), serves its metrics, and
/// starts its driver.
pub fn start(config: &NodeConfig) -> Result<Started, RunError> {
    let me = config
        .validators
        .id_of(&config.keypair.public_key())
        .expect("load_config checked the key is in the set");
    let mut node = Node::open(
        &config.data_dir,
        config.core.clone(),
        config.validators.clone(),
        Keypair::from_seed(&config.keypair.seed()),
        KvStore::new(),
    )
    .map_err(RunError::Node)?;
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
    let (router, queues) = Router::new(&config.validators, me, max_frame, metrics);
    let peers = queues
        .into_iter()
        .map(|(id, queue)| Peer {
            addr: config.addresses[usize::from(id.0)],
            key: config
                .validators
                .key(id)
                .expect("id from the set")
                .public_key(),
            queue,
        })
        .collect();
    let (driver, thread) =
        driver::spawn(node, router.clone()).map_err(|err| RunError::Transport(Box::new(err)))?;
    Ok(Started {
        me,
        driver,
        thread,
        router,
        peers,
        max_frame,
        limits: ServeLimits::new(&config.core, max_frame),
    })
}
