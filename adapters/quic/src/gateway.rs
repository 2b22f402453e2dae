//! Runs a gateway over QUIC: the gateway thread of `pbft-host` ([`pbft_host::gateway`]), a
//! reconnecting client link to every validator (the gateway connects as a client, with its
//! own key, and its requests' replies come back on the same link), and the node's accept
//! loop for the clients it serves (Retry, bounded handshakes, the same per-connection limits
//! as a validator's clients).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pbft_host::config::GatewayNodeConfig;
use pbft_host::driver::{Connections, Router};
use pbft_host::gateway::{self, Running};
use pbft_host::metrics::NodeMetrics;
use pbft_host::peers::Peers;
use pbft_host::serve::ServeLimits;
use pbft_host::start::{CLIENT_FRAME_OVERHEAD, RunError, Sockets, connection_limits};
use quinn::{Endpoint, VarInt};

use crate::identity::ALPN_CLIENT;
use crate::node::accept_loop;
use crate::transport::{self, TransportError, close};

/// Runs the gateway `config` describes until `shutdown` completes (then it stops accepting
/// and closes every connection with a reason).
///
/// # Errors
///
/// The endpoint cannot be set up or bound, or the gateway's thread cannot start.
pub async fn run(
    config: GatewayNodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let transport_error = |err: TransportError| RunError::Transport(Box::new(err));
    let network = &config.network;
    let server = transport::server_config(&config.keypair).map_err(transport_error)?;
    let mut caps = connection_limits(network.validators.len(), Sockets::Shared);
    // Validators never dial a gateway: their keys get no place as peers here.
    caps.per_validator = 0;
    let endpoint = Endpoint::server(server, config.listen).map_err(|err| {
        RunError::Transport(format!("listening on {}: {err}", config.listen).into())
    })?;
    let metrics = Arc::new(NodeMetrics::gateway());
    if let Some(addr) = config.metrics {
        let bound = pbft_host::metrics::serve(addr, metrics.clone()).map_err(RunError::Metrics)?;
        tracing::info!(%bound, "metrics");
    }
    let max_frame = network.core.max_message_bytes + CLIENT_FRAME_OVERHEAD;
    let known = network.known_addresses();
    let set = (network.validators.public_keys().collect(), Vec::new());
    let me = config.keypair.public_key();
    let (peers, opened) = Peers::new(me, set, known, max_frame, metrics.clone());
    let router = Router::new(peers, None, metrics.clone());
    let core = gateway::core_for(&config).map_err(|err| RunError::Transport(err.into()))?;
    let identity = gateway::Identity {
        chain: network.core.chain_id,
        key: config.keypair.public_key(),
    };
    let Running {
        driver,
        router,
        thread,
    } = gateway::spawn((core, identity), router, metrics)
        .map_err(|err| RunError::Transport(Box::new(err)))?;
    tracing::info!(listen = %config.listen, key = %config.keypair.public_key(), "gateway listening");
    // A link to each validator of the set the gateway follows, opened as it changes; the
    // replies to its clients come back on it.
    let keypair = Arc::new(pbft_core::Keypair::from_seed(&config.keypair.seed()));
    let connected = driver.metrics().peers_connected.clone();
    let inbound = {
        let driver = driver.clone();
        move |key| Some(gateway::inbound_for(&driver, key))
    };
    let links = transport::spawn_links(
        endpoint.clone(),
        (keypair, ALPN_CLIENT),
        opened,
        max_frame,
        connected,
        inbound,
    );
    let connections = Connections::new(Arc::new(network.validators.clone()), caps);
    let limits = ServeLimits::new(&network.core, max_frame);
    let accept = tokio::spawn(accept_loop(
        endpoint.clone(),
        driver.clone(),
        router,
        connections,
        limits,
    ));
    shutdown.await;
    tracing::info!("shutting down");
    accept.abort();
    driver.shutdown();
    let joined = tokio::task::spawn_blocking(move || thread.join()).await;
    endpoint.close(VarInt::from_u32(close::SHUTDOWN), b"shutting down");
    links.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    match joined {
        Ok(Ok(())) => Ok(()),
        _ => Err(RunError::Panicked),
    }
}
