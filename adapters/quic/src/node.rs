//! Runs a validator over QUIC: the node driver from `pbft-host` on its own thread, one
//! reconnecting link per peer, and an accept loop that admits peers and clients by key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::ReplicaId;
use pbft_host::config::NodeConfig;
use pbft_host::driver::{self, Driver, Input, Router};
use pbft_host::kv::KvStore;
use pbft_host::metrics::{self, NodeMetrics};
use pbft_host::node::{Node, NodeError};
use quinn::{Endpoint, Incoming, VarInt};

use crate::identity::ALPN_PEER;
use crate::transport::{
    self, StreamEnd, TransportError, close, hand_over, link, read_frames, refuse, write_frames,
};

/// Why a node stopped with an error.
#[derive(Debug)]
pub enum RunError {
    /// The node cannot start or failed (its log, its config).
    Node(NodeError),
    /// The transport cannot be set up.
    Transport(TransportError),
    /// The metrics endpoint cannot be bound.
    Metrics(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Node(err) => write!(f, "{err}"),
            RunError::Transport(err) => write!(f, "{err}"),
            RunError::Metrics(err) => write!(f, "metrics endpoint: {err}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Extra bytes a client frame wraps around a consensus message.
const CLIENT_FRAME_OVERHEAD: usize = 64;

/// Runs the validator `config` describes until `shutdown` completes (then it stops
/// accepting, makes its log durable, and closes every connection with a reason) or the
/// node fails.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let me = config
        .validators
        .id_of(&config.keypair.public_key())
        .expect("load_config checked the key is in the set");
    let max = config.core.max_message_bytes + CLIENT_FRAME_OVERHEAD;
    let node = Node::open(
        &config.data_dir,
        config.core.clone(),
        config.validators.clone(),
        pbft_core::Keypair::from_seed(&config.keypair.seed()),
        KvStore::new(),
    )
    .map_err(RunError::Node)?;
    // After the data dir's lock: a second node on the same dir says so, not "port in use".
    let metrics = Arc::new(NodeMetrics::new());
    if let Some(addr) = config.metrics {
        let bound = metrics::serve(addr, metrics.clone()).map_err(RunError::Metrics)?;
        tracing::info!(%bound, "metrics");
    }
    tracing::info!(
        id = me.0,
        view = node.replica().view(),
        stable = node.replica().stable_checkpoint().seq,
        "restored"
    );
    let (router, queues) = Router::new(&config.validators, me, metrics.clone());
    let (driver, thread) = driver::spawn(node, router.clone()).map_err(|err| {
        RunError::Node(NodeError::Wal(pbft_host::wal::WalError::Io {
            path: config.data_dir.clone(),
            source: err,
        }))
    })?;
    let endpoint = Endpoint::server(
        transport::server_config(&config.keypair).map_err(RunError::Transport)?,
        config.listen,
    )
    .map_err(|err| RunError::Transport(TransportError::Io(err)))?;
    tracing::info!(listen = %config.listen, id = me.0, "listening");
    let mut links = Vec::new();
    for (id, queue) in queues {
        let ReplicaId(index) = id;
        let key = config
            .validators
            .key(id)
            .expect("id from the set")
            .public_key();
        let client = transport::client_config(&config.keypair, key, ALPN_PEER)
            .map_err(RunError::Transport)?;
        links.push(tokio::spawn(link(
            endpoint.clone(),
            config.addresses[index as usize],
            client,
            queue,
            max,
            None,
            Some(metrics.peers_connected.clone()),
        )));
    }
    let accept = tokio::spawn(accept_loop(
        endpoint.clone(),
        driver.clone(),
        router,
        config.validators.clone(),
        max,
    ));
    let failed = tokio::task::spawn_blocking({
        let thread = thread;
        move || thread.join()
    });
    tokio::pin!(failed);
    let outcome = tokio::select! {
        () = shutdown => None,
        joined = &mut failed => Some(joined),
    };
    accept.abort();
    let result = match outcome {
        None => {
            tracing::info!("shutting down");
            driver.shutdown();
            failed.await
        }
        Some(joined) => joined,
    };
    endpoint.close(VarInt::from_u32(close::SHUTDOWN), b"shutting down");
    for link in links {
        link.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    match result {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(err))) => Err(RunError::Node(err)),
        // The node's thread panicked: nothing signed after the panic left it.
        Ok(Err(_)) | Err(_) => panic!("the node thread panicked"),
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    driver: Driver,
    router: Arc<Router>,
    validators: pbft_core::ValidatorSet,
    max: usize,
) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve(
            incoming,
            driver.clone(),
            router.clone(),
            validators.clone(),
            max,
        ));
    }
}

/// One accepted connection: admit it by key and role, then read its streams.
async fn serve(
    incoming: Incoming,
    driver: Driver,
    router: Arc<Router>,
    validators: pbft_core::ValidatorSet,
    max: usize,
) {
    let metrics = driver.metrics().clone();
    let Ok(connection) = incoming.await else {
        metrics.reject("handshake_failed");
        return;
    };
    let (key, is_peer) = match transport::admit(&connection, &validators) {
        Ok(admitted) => admitted,
        Err(reason) => {
            tracing::debug!(remote = %connection.remote_address(), reason, "refused");
            refuse(&metrics, &connection, close::UNKNOWN_KEY, reason);
            return;
        }
    };
    if !is_peer && metrics.clients_connected.get() as usize >= transport::MAX_CLIENTS {
        refuse(&metrics, &connection, close::BUSY, "too_many_clients");
        return;
    }
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let driver = driver.clone();
        let router = router.clone();
        let connection = connection.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let end = if is_peer {
                read_frames(&mut recv, max, |bytes| {
                    hand_over(&driver, Input::Peer { from: key, bytes })
                })
                .await
            } else {
                let queue = router.attach_client(key);
                let reader = read_frames(&mut recv, max, |bytes| {
                    hand_over(&driver, Input::Client { from: key, bytes })
                });
                let end = tokio::select! {
                    end = reader => end,
                    _ = write_frames(&mut send, &queue.frames, max) => StreamEnd::Closed,
                };
                router.detach_client(&key, &queue);
                end
            };
            match end {
                StreamEnd::Closed => {}
                StreamEnd::Truncated => metrics.reject("truncated_frame"),
                StreamEnd::Oversized => {
                    refuse(&metrics, &connection, close::BAD_FRAME, "oversized_frame");
                }
            }
        });
    }
}
