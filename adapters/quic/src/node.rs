//! Runs a validator over QUIC: the node driver from `pbft-host` on its own thread, one
//! reconnecting link per peer, and an accept loop that makes new addresses prove themselves
//! (Retry), bounds handshakes, and admits peers and clients by key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pbft_core::EpochChange;
use pbft_host::config::NodeConfig;
use pbft_host::driver::admission::Handshake;
use pbft_host::driver::{Connections, Driver, Role, Router};
use pbft_host::framing::StreamEnd;
use pbft_host::serve::{self, ServeLimits};
pub use pbft_host::start::RunError;
use pbft_host::start::{Sockets, Started, connection_limits, start};
use quinn::{Endpoint, Incoming, VarInt};

use crate::identity::ALPN_PEER;
use crate::transport::{self, Receiving, Sending, TokioTimer, TransportError, close, refuse};

/// Runs the validator `config` describes until `shutdown` completes (then it stops
/// accepting, makes its log durable, and closes every connection with a reason) or the
/// node fails.
pub async fn run(
    config: NodeConfig,
    chain: Option<Vec<EpochChange>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let transport_error = |err: TransportError| RunError::Transport(Box::new(err));
    let server = transport::server_config(&config.keypair).map_err(transport_error)?;
    // Before the node opens its files: they count against the limit too.
    let caps = connection_limits(config.validators.len(), Sockets::Shared);
    let Started {
        me,
        driver,
        thread,
        router,
        peers,
        links,
        max_frame,
        limits,
    } = start(&config, chain)?;
    let endpoint = match Endpoint::server(server, config.listen) {
        Ok(endpoint) => endpoint,
        Err(err) => {
            let err = RunError::Transport(format!("listening on {}: {err}", config.listen).into());
            return Err(Started::abandon(&driver, thread, err));
        }
    };
    tracing::info!(listen = %config.listen, id = me.0, "listening");
    // A link to each peer whose address is known, opened as the set changes; each ends when
    // its queue closes (the key left).
    let keypair = Arc::new(pbft_core::Keypair::from_seed(&config.keypair.seed()));
    let connected = driver.metrics().peers_connected.clone();
    let identity = (keypair, ALPN_PEER);
    let links = transport::spawn_links(
        endpoint.clone(),
        identity,
        links,
        max_frame,
        connected,
        |_| None,
    );
    let connections = Connections::new(peers.clone(), caps);
    let accept = tokio::spawn(accept_loop(
        endpoint.clone(),
        driver.clone(),
        router,
        connections,
        limits,
    ));
    let mut finished = tokio::task::spawn_blocking(move || Started::finish(thread));
    let failed_early = tokio::select! {
        () = shutdown => None,
        result = &mut finished => Some(result),
    };
    accept.abort();
    let result = match failed_early {
        None => {
            tracing::info!("shutting down");
            driver.shutdown();
            finished.await
        }
        Some(result) => result,
    };
    endpoint.close(VarInt::from_u32(close::SHUTDOWN), b"shutting down");
    links.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result.unwrap_or(Err(RunError::Panicked))
}

pub(crate) async fn accept_loop(
    endpoint: Endpoint,
    driver: Driver,
    router: Arc<Router>,
    connections: Arc<Connections>,
    limits: ServeLimits,
) {
    // `accept` ends only when the endpoint closes (the node is shutting down).
    while let Some(incoming) = endpoint.accept().await {
        // A Retry makes the other side prove it receives at its address before anything is
        // held for it: a spoofed Initial costs one stateless packet, not a handshake place.
        if !incoming.remote_address_validated() {
            if let Err(err) = incoming.retry() {
                // Unreachable (only an already validated attempt cannot be retried); refuse.
                err.into_incoming().refuse();
            }
            continue;
        }
        let handshake = match connections.handshake(incoming.remote_address().ip()) {
            Ok(handshake) => handshake,
            Err(refusal) => {
                driver.metrics().reject(refusal.reason());
                incoming.refuse();
                continue;
            }
        };
        tokio::spawn(accepted(
            handshake,
            incoming,
            driver.clone(),
            router.clone(),
            limits,
        ));
    }
}

/// One accepted connection: admit it by key and role once its handshake is done (quinn
/// ends a handshake that stalls at the idle timeout), then serve its streams.
async fn accepted(
    handshake: Handshake,
    incoming: Incoming,
    driver: Driver,
    router: Arc<Router>,
    limits: ServeLimits,
) {
    let metrics = driver.metrics().clone();
    let Ok(connection) = incoming.await else {
        metrics.reject("handshake_failed");
        return;
    };
    // Held while the connection is served: its place among the validator's or the clients'.
    let (key, role, _slot) = match transport::admit(&connection, handshake) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::debug!(remote = %connection.remote_address(), %refusal, "refused");
            refuse(&metrics, &connection, refusal);
            return;
        }
    };
    if role == Role::Validator {
        // A validator dials from the endpoint it listens on: where a validator added after
        // genesis is reached.
        router.peers().learn(&key, connection.remote_address());
    }
    // A client that opens no stream is never served; it only holds its place.
    let first = match role {
        Role::Client => {
            match tokio::time::timeout(transport::FIRST_STREAM_TIMEOUT, connection.accept_bi())
                .await
            {
                Ok(first) => first,
                Err(_) => {
                    metrics.reject("no_stream");
                    connection.close(VarInt::from_u32(close::NO_STREAM), b"no_stream");
                    return;
                }
            }
        }
        Role::Validator => connection.accept_bi().await,
    };
    let mut next = first;
    while let Ok((send, recv)) = next {
        let (driver, router) = (driver.clone(), router.clone());
        let served = connection.clone();
        tokio::spawn(async move {
            let (reader, writer) = (Receiving::new(recv), Sending(send));
            let end = serve::serve(
                key,
                role,
                reader,
                writer,
                &driver,
                &router,
                &limits,
                &TokioTimer,
            )
            .await;
            // Counted by `serve`; the other side learns why its connection ends.
            match end {
                StreamEnd::Oversized => {
                    served.close(VarInt::from_u32(close::BAD_FRAME), b"oversized_frame");
                }
                StreamEnd::Idle => served.close(VarInt::from_u32(close::IDLE), b"idle"),
                StreamEnd::Stalled => served.close(VarInt::from_u32(close::IDLE), b"stalled"),
                StreamEnd::Removed => {
                    served.close(VarInt::from_u32(close::UNKNOWN_KEY), b"validator_removed");
                }
                StreamEnd::Closed | StreamEnd::Truncated => {}
            }
        });
        next = connection.accept_bi().await;
    }
}
