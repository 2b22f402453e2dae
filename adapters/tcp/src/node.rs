//! Runs a validator over TCP: the node driver from `pbft-host` on its own thread, one
//! reconnecting channel per peer, and an accept loop that bounds handshakes and admits peers
//! and clients by the key they prove in them; it outlives failed accepts (EMFILE).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pbft_host::config::NodeConfig;
use pbft_host::driver::admission::Handshake;
use pbft_host::driver::{self, Connections, Driver, Router};
use pbft_host::serve::{self, ServeLimits};
use pbft_host::start::{RunError, Sockets, Started, connection_limits, start};
use smol::net::{TcpListener, TcpStream};

use crate::link::{Identity, Secured, SmolTimer, keep_alive, link};
use crate::secure::{Role, respond};

/// Runs the validator `config` describes until `shutdown` yields or closes (then it stops
/// accepting, makes its log durable and closes every connection) or the node fails.
/// Blocks the calling thread, which drives the accept loop.
pub fn run(
    config: NodeConfig,
    chain: Option<Vec<pbft_core::EpochChange>>,
    shutdown: async_channel::Receiver<()>,
) -> Result<(), RunError> {
    // Before the node opens its files: they count against the limit too.
    let caps = connection_limits(config.validators.len(), Sockets::PerConnection);
    let started = start(&config, chain)?;
    let (driver, router, max_frame) = (started.driver, started.router, started.max_frame);
    let limits = started.limits;
    let (me, thread, peers, links) = (started.me, started.thread, started.peers, started.links);
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
        // A link to each peer whose address is known, opened as the set changes; each ends
        // when its queue closes (the key left, or a new address replaced it).
        let listens = Some(config.listen.port());
        let (link_keypair, metrics) = (keypair.clone(), driver.metrics().clone());
        let linking = smol::spawn(async move {
            // Cancelled with this task when the node stops.
            let mut running: Vec<smol::Task<()>> = Vec::new();
            while let Ok(peer) = links.recv_async().await {
                running.retain(|task| !task.is_finished());
                let identity = Identity {
                    chain,
                    keypair: link_keypair.clone(),
                    role: Role::Peer,
                    listens,
                    expected: peer.key,
                };
                let gauge = Some(metrics.peers_connected.clone());
                running.push(smol::spawn(link(
                    peer.addr, identity, peer.queue, max_frame, None, gauge,
                )));
            }
        });
        let connections = Connections::new(peers, caps);
        let accepting = smol::spawn(accept_loop(
            listener,
            driver.clone(),
            router,
            connections,
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
        drop(linking);
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

/// Pause after a failed `accept` before the next: the error (EMFILE above all) usually
/// lasts until connections close, and the connection that met it stays in the backlog, so
/// without a pause the loop would spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

async fn accept_loop(
    listener: TcpListener,
    driver: Driver,
    router: Arc<Router>,
    connections: Arc<Connections>,
    identity: (pbft_core::ChainId, Arc<pbft_core::Keypair>),
    limits: ServeLimits,
) {
    let mut failures = Failures::default();
    // Never ends on its own: the node stops accepting only when it stops (the task is
    // dropped).
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                driver.metrics().reject("accept_failed");
                failures.warn(&err);
                smol::Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let handshake = match connections.handshake(from.ip()) {
            Ok(handshake) => handshake,
            Err(refusal) => {
                // Dropping the stream closes it: nothing is held for it.
                driver.metrics().reject(refusal.reason());
                continue;
            }
        };
        keep_alive(&stream);
        smol::spawn(accepted(
            handshake,
            stream,
            driver.clone(),
            router.clone(),
            identity.clone(),
            limits,
        ))
        .detach();
    }
}

/// Failed accepts, logged at most once a second (a full descriptor table fails every
/// accept until connections close).
#[derive(Default)]
struct Failures {
    last_warned: Option<Instant>,
    since: u64,
}

impl Failures {
    fn warn(&mut self, err: &std::io::Error) {
        self.since += 1;
        if self
            .last_warned
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(%err, failures = self.since, "accepting a connection failed; retrying");
            self.last_warned = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// One accepted connection: the handshake admits it by key and role, then it is served.
async fn accepted(
    handshake: Handshake,
    mut stream: TcpStream,
    driver: Driver,
    router: Arc<Router>,
    (chain, keypair): (pbft_core::ChainId, Arc<pbft_core::Keypair>),
    limits: ServeLimits,
) {
    let metrics = driver.metrics().clone();
    let _ = stream.set_nodelay(true);
    // The handshake's place turns into the connection's (or is freed) once the key is
    // proven; if the handshake fails first, dropping `admit` frees it.
    let admit = |key: &pbft_core::PublicKey, role: Role| handshake.admit(key, admitted_as(role));
    // Held while the connection is served.
    let (channel, proof, _slot) = match respond(&mut stream, &chain, &keypair, admit).await {
        Ok(accepted) => accepted,
        Err(err) => {
            metrics.reject(err.label());
            return;
        }
    };
    let role = admitted_as(proof.role);
    // A validator says where it listens (at the address it connects from): where a
    // validator added after genesis is reached.
    if let (driver::Role::Validator, Some(port), Ok(from)) =
        (role, proof.listens, stream.peer_addr())
    {
        router
            .peers()
            .learn(&proof.key, std::net::SocketAddr::new(from.ip(), port));
    }
    let (reader, writer) = Secured::halves(stream, channel);
    serve::serve(
        proof.key, role, reader, writer, &driver, &router, &limits, &SmolTimer,
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
