//! Runs a [`Gateway`] on a thread of its own, fed like a node ([`crate::driver`]): client
//! connections push their frames through a [`Driver`] (bounded queues, back-pressure per
//! stream, the same [`crate::serve`] limits as a node's clients), and the gateway's links to
//! the validators push what the validators answer into the same driver as validators'
//! inputs. What the gateway sends goes out through a [`Router`]: requests to each
//! validator's link, as a client's frames; replies and refusals to each client's
//! connection.
//!
//! A client's session opens with its first request and closes once none of its connections
//! is attached (checked every [`SWEEP_EVERY`]); the core keeps its bucket a while after.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flume::RecvTimeoutError;
use pbft_core::{
    Destination, Gateway, GatewayConfig, GatewayOutput, Message, PublicKey, ReplicaId, Shed,
    ValidatorSet,
};

use crate::driver::{Driver, Input, Router};
use crate::metrics::NodeMetrics;
use crate::node::Transmit;
use crate::session::Inbound;
use crate::wire::{ClientFrame, ServerFrame};

/// How often sessions whose clients left are closed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The id a gateway's [`Router`] is built for: no validator's, so it keeps a queue for
/// every validator (a set holds at most `u16::MAX` validators, ids below it).
pub const NOT_A_VALIDATOR: ReplicaId = ReplicaId(u16::MAX);

/// A gateway running on its thread.
pub struct Running {
    /// Where client connections and validators' links push their frames.
    pub driver: Driver,
    /// Where the gateway's messages go; the transport attaches client connections to it.
    pub router: Arc<Router>,
    /// The thread; it ends on [`Driver::shutdown`] or once every [`Driver`] is dropped.
    pub thread: JoinHandle<()>,
}

/// Starts a gateway in front of `validators` on its own thread. `router` must come from
/// [`Router::new`] for [`NOT_A_VALIDATOR`], without compression (validators read a client's
/// frames as they are); its validator queues are the transport's links.
///
/// # Errors
///
/// The thread cannot be started.
pub fn spawn(
    gateway: Gateway,
    validators: ValidatorSet,
    router: Arc<Router>,
    metrics: Arc<NodeMetrics>,
) -> std::io::Result<Running> {
    let (driver, inputs) = Driver::detached(metrics);
    let thread_router = router.clone();
    let thread = std::thread::Builder::new()
        .name("pbft-gateway".into())
        .spawn(move || run(gateway, &validators, &inputs, &thread_router))?;
    Ok(Running {
        driver,
        router,
        thread,
    })
}

/// What a link to validator `key` does with a frame it receives: hand it to the gateway as
/// that validator's input (a reply, in a [`ServerFrame`]).
pub fn inbound_for(driver: &Driver, key: PublicKey) -> Inbound {
    let driver = driver.clone();
    Box::new(move |bytes| {
        let driver = driver.clone();
        Box::pin(async move { driver.input(Input::Peer { from: key, bytes }).await })
    })
}

/// The defaults of a gateway in front of a network with the core's `config`: requests up to
/// its `max_request_bytes`, batches up to its `max_batch_ops`, replies up to its
/// `max_message_bytes`.
pub fn config_for(core: &pbft_core::Config) -> GatewayConfig {
    let mut config = GatewayConfig::new(core.chain_id);
    config.max_request_bytes = core.max_request_bytes;
    config.max_batch_ops = config.max_batch_ops.min(core.max_batch_ops).max(1);
    config.max_reply_bytes = core.max_message_bytes;
    config
}

fn run(
    mut gateway: Gateway,
    validators: &ValidatorSet,
    inputs: &crate::driver::DetachedInputs,
    router: &Router,
) {
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64 + 1;
    let mut swept = Instant::now();
    loop {
        let due = gateway
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(now())));
        let wait = due.unwrap_or(SWEEP_EVERY).min(SWEEP_EVERY);
        match inputs.wait(Some(wait)) {
            Ok(Input::Client { from, bytes, .. }) => {
                client_frame(&mut gateway, router, from, &bytes, now())
            }
            Ok(Input::Peer { from, bytes }) => {
                // Replies reach the gateway in the client protocol's frames; a validator's
                // key the transport admitted names the signer they must carry.
                let reply = match (validators.id_of(&from), ServerFrame::decode(&bytes)) {
                    (Some(id), Ok(ServerFrame::Message(message))) => Some((id, message)),
                    _ => None,
                };
                match reply {
                    Some((id, message)) => {
                        if gateway.handle_reply(id, &message).is_err() {
                            router.metrics().reject("gateway_reply_refused");
                        }
                    }
                    None => router.metrics().reject("gateway_not_a_reply"),
                }
            }
            Ok(Input::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let time = now();
        if gateway.poll_timeout().is_some_and(|at| at <= time) {
            gateway.handle_timeout(time);
        }
        if swept.elapsed() >= SWEEP_EVERY {
            let gone: Vec<PublicKey> = gateway
                .clients()
                .filter(|key| !router.is_attached(key))
                .copied()
                .collect();
            for key in gone {
                gateway.close(&key);
            }
            swept = Instant::now();
        }
        while let Some(output) = gateway.poll_output() {
            route(router, output);
        }
    }
}

/// A frame from `client`'s connection: a request for the gateway to carry.
fn client_frame(gateway: &mut Gateway, router: &Router, client: PublicKey, bytes: &[u8], now: u64) {
    let request = match ClientFrame::decode(bytes) {
        Ok(ClientFrame::Message(message)) => match Message::decode(&message, usize::MAX) {
            Ok(Message::Request(request)) => request,
            _ => return refuse(router, client, 0, "not a request"),
        },
        // The gateway orders and answers requests; status and proofs come from validators.
        Ok(_) => {
            return refuse(
                router,
                client,
                0,
                "a gateway takes requests only; ask a validator",
            );
        }
        Err(_) => return refuse(router, client, 0, "undecodable frame"),
    };
    let client_seq = request.client_seq;
    let verdict = match gateway.submit(now, &client, request.clone()) {
        Err(Shed::NoSession) => gateway
            .open(now, client)
            .and_then(|()| gateway.submit(now, &client, request)),
        verdict => verdict,
    };
    match verdict {
        // The client sent again a request the gateway holds: it is being carried.
        Ok(()) | Err(Shed::Duplicate) => {}
        Err(shed) => refuse(router, client, client_seq, &shed.to_string()),
    }
}

fn refuse(router: &Router, client: PublicKey, client_seq: u64, reason: &str) {
    let frame = ServerFrame::Refused {
        client_seq,
        reason: reason.to_string(),
    };
    router.to_client(&client, &frame);
}

fn route(router: &Router, output: GatewayOutput) {
    match output {
        GatewayOutput::Transmit { to, bytes } => router.route(Transmit {
            to: Destination::Validator(to),
            bytes: ClientFrame::Message(bytes).encode(),
        }),
        GatewayOutput::Answered {
            client, replies, ..
        } => {
            for reply in replies {
                let frame = ServerFrame::Message(Message::Reply(reply).encode());
                router.to_client(&client, &frame);
            }
        }
        GatewayOutput::Refused {
            client,
            client_seq,
            reason,
        } => refuse(router, client, client_seq, &reason.to_string()),
    }
}
