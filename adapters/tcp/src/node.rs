//! Runs a validator over TCP: the node driver from `pbft-host` on its own thread, one
//! reconnecting channel per peer, and an accept loop that admits peers and clients by the
//! key they prove in the handshake.

use std::sync::Arc;

use pbft_core::ValidatorSet;
use pbft_host::config::NodeConfig;
use pbft_host::driver::{self, Driver, Router};
use pbft_host::serve::{self, ServeLimits};
use pbft_host::start::{RunError, Started, start};
use smol::net::{TcpListener, TcpStream};

use crate::link::{Identity, Secured, SmolTimer, link};
use crate::secure::{Role, respond};

/// Runs the validator `config` describes until `shutdown` yields or closes (then it stops
/// accepting, makes its log durable and closes every connection) or the node fails.
/// Blocks the calling thread, which drives the accept loop.
pub fn run(config: NodeConfig, shutdown: async_channel::Receiver<()>) -> Result<(), RunError> {
    let started = start(&config)?;
    let (driver, router, max_frame) = (started.driver, started.router, started.max_frame);
    let limits = started.limits;
    let (me, thread, peers) = (started.me, started.thread, started.peers);
    let keypair = Arc::new(pbft_core::Keypair::from_seed(&config.keypair.seed()));
    let chain = config.core.chain_id;
    smol::block_on(async move {
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                let err =
                    RunError::Transport(format!("listening on {}: {err}", config.listen).into());
                return Err(Started::abandon(&driver, thread, err));
            }
        };
        tracing::info!(listen = %config.listen, id = me.0, "listening (tcp)");
        let tasks: Vec<_> = peers
            .into_iter()
            .map(|peer| {
                let identity = Identity {
                    chain,
                    keypair: keypair.clone(),
                    role: Role::Peer,
                    expected: peer.key,
                };
                let gauge = Some(driver.metrics().peers_connected.clone());
                smol::spawn(link(
                    peer.addr, identity, peer.queue, max_frame, None, gauge,
                ))
            })
            .collect();
        let accepting = smol::spawn(accept_loop(
            listener,
            driver.clone(),
            router,
            config.validators.clone(),
            (chain, keypair),
            limits,
        ));
        let mut finished = smol::unblock(move || Started::finish(thread));
        let early = {
            let failed = async { Some((&mut finished).await) };
            let stop = async {
                let _ = shutdown.recv().await;
                None
            };
            smol::future::or(failed, stop).await
        };
        drop(accepting);
        drop(tasks);
        match early {
            Some(result) => result,
            None => {
                tracing::info!("shutting down");
                driver.shutdown();
                finished.await
            }
        }
    })
}

async fn accept_loop(
    listener: TcpListener,
    driver: Driver,
    router: Arc<Router>,
    validators: ValidatorSet,
    identity: (pbft_core::ChainId, Arc<pbft_core::Keypair>),
    limits: ServeLimits,
) {
    let connections = Arc::new(driver::Connections::default());
    while let Ok((stream, _)) = listener.accept().await {
        let slot = match connections.take() {
            Ok(slot) => slot,
            Err(refusal) => {
                driver.metrics().reject(refusal.reason());
                continue;
            }
        };
        smol::spawn(accepted(
            slot,
            stream,
            driver.clone(),
            router.clone(),
            validators.clone(),
            identity.clone(),
            limits,
        ))
        .detach();
    }
}

/// One accepted connection: the handshake admits it by key and role, then it is served.
async fn accepted(
    _slot: driver::Slot,
    mut stream: TcpStream,
    driver: Driver,
    router: Arc<Router>,
    validators: ValidatorSet,
    (chain, keypair): (pbft_core::ChainId, Arc<pbft_core::Keypair>),
    limits: ServeLimits,
) {
    let metrics = driver.metrics().clone();
    let _ = stream.set_nodelay(true);
    let clients = metrics.clients_connected.get() as usize;
    let admit = |key: &pbft_core::PublicKey, role: Role| {
        driver::admits(&validators, key, admitted_as(role), clients)
    };
    let (channel, key, role) = match respond(&mut stream, &chain, &keypair, admit).await {
        Ok(accepted) => accepted,
        Err(err) => {
            metrics.reject(err.label());
            return;
        }
    };
    let (reader, writer) = Secured::halves(stream, channel);
    serve::serve(
        key,
        admitted_as(role),
        reader,
        writer,
        &driver,
        &router,
        &limits,
        &SmolTimer,
    )
    .await;
}

/// The admission role of a handshake's role (the responder's own never reaches admission).
fn admitted_as(role: Role) -> driver::Role {
    match role {
        Role::Peer => driver::Role::Validator,
        Role::Client | Role::Server => driver::Role::Client,
    }
}
