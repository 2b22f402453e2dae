//! Runs a validator over QUIC: the node driver from `pbft-host` on its own thread, one
//! reconnecting link per peer, and an accept loop that admits peers and clients by key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pbft_host::config::NodeConfig;
use pbft_host::driver::{Connections, Driver, Router, Slot};
use pbft_host::framing::StreamEnd;
use pbft_host::serve::{self, ServeLimits};
pub use pbft_host::start::RunError;
use pbft_host::start::{Started, start};
use quinn::{Endpoint, Incoming, VarInt};

use crate::identity::ALPN_PEER;
use crate::transport::{self, Receiving, Sending, TokioTimer, TransportError, close, link, refuse};

/// Runs the validator `config` describes until `shutdown` completes (then it stops
/// accepting, makes its log durable, and closes every connection with a reason) or the
/// node fails.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let transport_error = |err: TransportError| RunError::Transport(Box::new(err));
    let server = transport::server_config(&config.keypair).map_err(transport_error)?;
    let Started {
        me,
        driver,
        thread,
        router,
        peers,
        max_frame,
        limits,
    } = start(&config)?;
    let endpoint = match Endpoint::server(server, config.listen) {
        Ok(endpoint) => endpoint,
        Err(err) => {
            let err = RunError::Transport(format!("listening on {}: {err}", config.listen).into());
            return Err(Started::abandon(&driver, thread, err));
        }
    };
    tracing::info!(listen = %config.listen, id = me.0, "listening");
    let mut links = Vec::new();
    for peer in peers {
        let tls = match transport::client_config(&config.keypair, peer.key, ALPN_PEER) {
            Ok(tls) => tls,
            Err(err) => return Err(Started::abandon(&driver, thread, transport_error(err))),
        };
        let connected = driver.metrics().peers_connected.clone();
        let link = link(
            endpoint.clone(),
            peer.addr,
            tls,
            peer.queue,
            max_frame,
            None,
            Some(connected),
        );
        links.push(tokio::spawn(link));
    }
    let accept = tokio::spawn(accept_loop(
        endpoint.clone(),
        driver.clone(),
        router,
        config.validators.clone(),
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
    for link in links {
        link.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result.unwrap_or(Err(RunError::Panicked))
}

async fn accept_loop(
    endpoint: Endpoint,
    driver: Driver,
    router: Arc<Router>,
    validators: pbft_core::ValidatorSet,
    limits: ServeLimits,
) {
    let connections = Arc::new(Connections::default());
    while let Some(incoming) = endpoint.accept().await {
        let slot = match connections.take() {
            Ok(slot) => slot,
            Err(refusal) => {
                driver.metrics().reject(refusal.reason());
                incoming.refuse();
                continue;
            }
        };
        tokio::spawn(accepted(
            slot,
            incoming,
            driver.clone(),
            router.clone(),
            validators.clone(),
            limits,
        ));
    }
}

/// One accepted connection: admit it by key and role, then serve its streams.
async fn accepted(
    _slot: Slot,
    incoming: Incoming,
    driver: Driver,
    router: Arc<Router>,
    validators: pbft_core::ValidatorSet,
    limits: ServeLimits,
) {
    let metrics = driver.metrics().clone();
    let Ok(connection) = incoming.await else {
        metrics.reject("handshake_failed");
        return;
    };
    let clients = metrics.clients_connected.get() as usize;
    let (key, role) = match transport::admit(&connection, &validators, clients) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::debug!(remote = %connection.remote_address(), %refusal, "refused");
            refuse(&metrics, &connection, refusal);
            return;
        }
    };
    while let Ok((send, recv)) = connection.accept_bi().await {
        let (driver, router) = (driver.clone(), router.clone());
        let connection = connection.clone();
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
                    connection.close(VarInt::from_u32(close::BAD_FRAME), b"oversized_frame");
                }
                StreamEnd::Idle => connection.close(VarInt::from_u32(close::IDLE), b"idle"),
                StreamEnd::Closed | StreamEnd::Truncated => {}
            }
        });
    }
}
