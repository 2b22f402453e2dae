//! Runs a [`Gateway`] on a thread of its own, fed like a node ([`crate::driver`]): client
//! connections push their frames through a [`Driver`] (bounded queues, back-pressure per
//! stream, the same [`crate::serve`] limits as a node's clients), and the gateway's links to
//! the validators push what the validators answer into the same driver as validators'
//! inputs. What the gateway sends goes out through a [`Router`]: requests to each
//! validator's link, as a client's frames; replies and refusals to each client's
//! connection.
//!
//! A client's session opens with its relay claim or its first request, and closes once none
//! of its connections is attached (checked every [`SWEEP_EVERY`]); the core keeps its
//! bucket a while after.
//!
//! Replies come back through the gateway because each client signs a relay claim naming
//! the gateway's key ([`ClientFrame::Relay`]), which the gateway checks and forwards to every
//! validator: a backup that sees the client's request only inside a pre-prepare then knows
//! where to send its reply, and a claim cannot be displaced by someone replaying the
//! client's requests. A validator forgets relays with the connection that carried them, so
//! the gateway sends a client's claim again before every late request it sends to all, and
//! keeps its links busy with an empty frame every [`KEEP_ALIVE`] (a validator closes a
//! client connection idle for 30 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flume::RecvTimeoutError;
use pbft_core::{ChainId, Gateway, GatewayConfig, GatewayOutput, Message, PublicKey, Shed};

use crate::driver::{Driver, Input, Router};
use crate::metrics::NodeMetrics;
use crate::node::{Target, Transmit};
use crate::session::Inbound;
use crate::wire::{ClientFrame, ServerFrame, relay_digest};

/// How often sessions whose clients left are closed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the gateway's metrics are copied out, at most.
const METRICS_EVERY: Duration = Duration::from_millis(100);
/// How often the gateway sends every validator an empty frame, so its links never idle out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A gateway running on its thread.
pub struct Running {
    /// Where client connections and validators' links push their frames.
    pub driver: Driver,
    /// Where the gateway's messages go; the transport attaches client connections to it.
    pub router: Arc<Router>,
    /// The thread; it ends on [`Driver::shutdown`] or once every [`Driver`] is dropped.
    pub thread: JoinHandle<()>,
}

/// Who the gateway is: the network it serves and its own key (which clients' relay claims
/// name).
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// The network's chain id.
    pub chain: ChainId,
    /// The gateway's key.
    pub key: PublicKey,
}

/// Starts a gateway on its own thread. `router` must be without compression (validators read
/// a client's frames as they are), over [`Peers`](crate::peers::Peers) of the gateway's key
/// whose set is the network's genesis set; its links are the transport's, and they follow
/// the set as the gateway learns of new epochs.
///
/// # Errors
///
/// The thread cannot be started.
pub fn spawn(
    (gateway, identity): (Gateway, Identity),
    router: Arc<Router>,
    metrics: Arc<NodeMetrics>,
) -> std::io::Result<Running> {
    let (driver, inputs) = Driver::detached(metrics);
    let thread_router = router.clone();
    let thread = std::thread::Builder::new()
        .name("pbft-gateway".into())
        .spawn(move || {
            let mut state = State {
                gateway,
                identity,
                claims: HashMap::new(),
                told_rate: HashMap::new(),
            };
            run(&mut state, &inputs, &thread_router);
        })?;
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

/// The core gateway `config` describes: in a gateway-attested network it attests with its
/// own key, which must attest in the validators' epoch (the network's genesis `[[gateways]]`,
/// as governance changed them).
///
/// # Errors
///
/// A limit of zero. A key the network's genesis does not list is only warned about:
/// governance may have added it.
pub fn core_for(config: &crate::config::GatewayNodeConfig) -> Result<Gateway, String> {
    let network = &config.network;
    let gateway = Gateway::new(config.gateway.clone(), network.validators.clone())
        .map_err(|err| err.to_string())?;
    if !network.attested() {
        return Ok(gateway);
    }
    let key = config.keypair.public_key();
    if !network.core.attesting_gateways.contains(&key) {
        // Governance may have added it since genesis; if not, validators refuse what it
        // attests (`unknown_gateway` in their metrics) and its clients time out.
        tracing::warn!(
            %key,
            "this gateway's key is not among the network's genesis [[gateways]]: validators take its attestations only if a committed reconfiguration added it (pbft validator add-gateway)"
        );
    }
    let keypair = pbft_core::Keypair::from_seed(&config.keypair.seed());
    Ok(gateway.attesting(keypair))
}

/// The gateway thread's state.
struct State {
    gateway: Gateway,
    identity: Identity,
    /// Each client's relay claim as it sent it (a frame to forward as is), while its session
    /// is open.
    claims: HashMap<PublicKey, Vec<u8>>,
    /// When each client was last told it is over its rate (ms): a flooder gets one such
    /// answer per [`RATE_REFUSALS_EVERY_MS`], not one per request (answers would cost what
    /// the flood costs). Cleared at every sweep.
    told_rate: HashMap<PublicKey, u64>,
}

/// At most one "over the rate limit" answer per client this often, in ms.
pub const RATE_REFUSALS_EVERY_MS: u64 = 100;

fn run(state: &mut State, inputs: &crate::driver::DetachedInputs, router: &Router) {
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64 + 1;
    let (mut swept, mut kept_alive, mut counted) = (Instant::now(), Instant::now(), Instant::now());
    let mut epoch = state.gateway.validators().epoch();
    loop {
        let due = state
            .gateway
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(now())));
        let wait = due.unwrap_or(SWEEP_EVERY).min(SWEEP_EVERY);
        match inputs.wait(Some(wait)) {
            Ok(Input::Client { from, bytes, .. }) => {
                state.client_frame(router, from, bytes, now());
            }
            Ok(Input::Peer { from, bytes }) => {
                // Replies reach the gateway in the client protocol's frames; a validator's
                // key the transport admitted names the signer they must carry.
                // By its id in the set the gateway follows now (which a removed one is not in).
                let id = state.gateway.validators().id_of(&from);
                let reply = match (id, ServerFrame::decode(&bytes)) {
                    (Some(id), Ok(ServerFrame::Message(message))) => Some((id, message)),
                    _ => None,
                };
                match reply {
                    Some((id, message)) => {
                        if state.gateway.handle_reply(id, &message).is_err() {
                            router.metrics().reject("gateway_reply_not_counted");
                        }
                    }
                    None => router.metrics().reject("gateway_not_a_reply"),
                }
            }
            Ok(Input::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let time = now();
        if state.gateway.poll_timeout().is_some_and(|at| at <= time) {
            state.gateway.handle_timeout(time);
        }
        if swept.elapsed() >= SWEEP_EVERY {
            state.sweep(router);
            swept = Instant::now();
        }
        if counted.elapsed() >= METRICS_EVERY {
            let gateway = &state.gateway;
            let gauges = (
                gateway.sessions(),
                gateway.outstanding(),
                gateway.queued(),
                gateway.is_attesting(),
            );
            router.metrics().update_gateway(gateway.metrics(), gauges);
            counted = Instant::now();
        }
        if kept_alive.elapsed() >= KEEP_ALIVE {
            to_every_validator(router, &[]);
            kept_alive = Instant::now();
        }
        while let Some(output) = state.gateway.poll_output() {
            state.route(router, output);
        }
        // The links follow the set of the epoch the gateway follows (it learns a new one
        // from the validators' replies).
        let validators = state.gateway.validators();
        if validators.epoch() != epoch {
            epoch = validators.epoch();
            router
                .peers()
                .set_members(validators.public_keys().collect(), Vec::new());
        }
    }
}

impl State {
    /// A frame from `client`'s connection: its relay claim, or a request to carry.
    fn client_frame(&mut self, router: &Router, client: PublicKey, bytes: Vec<u8>, now: u64) {
        let request = match ClientFrame::decode(&bytes) {
            Ok(ClientFrame::Message(message)) => match Message::decode(&message, usize::MAX) {
                Ok(Message::Request(request)) => request,
                _ => return refuse(router, client, 0, "not a request"),
            },
            Ok(ClientFrame::Relay {
                client: claimed,
                signature,
            }) => return self.claim(router, (client, claimed, signature), bytes, now),
            // The gateway orders and answers requests; status and proofs come from validators.
            Ok(ClientFrame::Status | ClientFrame::Proof { .. } | ClientFrame::Epochs { .. }) => {
                return refuse(
                    router,
                    client,
                    0,
                    "a gateway carries requests only; ask a validator",
                );
            }
            Err(_) => return refuse(router, client, 0, "undecodable frame"),
        };
        let client_seq = request.client_seq;
        // Gateway-attested, the connection's key is the client's (the handshake proved it)
        // and the gateway signs for what it carries: the client's signature is not needed.
        if self.gateway.is_attesting() && request.client != client {
            let shed = Shed::WrongClient;
            return refuse(router, client, client_seq, &shed.to_string());
        }
        let submit = |gateway: &mut Gateway| match gateway.is_attesting() {
            true => gateway.submit_unsigned(now, &client, client_seq, request.op.clone()),
            false => gateway.submit(now, &client, request.clone()),
        };
        let verdict = match submit(&mut self.gateway) {
            Err(Shed::NoSession) => self
                .gateway
                .open(now, client)
                .and_then(|()| submit(&mut self.gateway)),
            verdict => verdict,
        };
        match verdict {
            // The client sent again a request the gateway holds: it is being carried.
            Ok(()) | Err(Shed::Duplicate) => {}
            Err(Shed::RateLimited) => {
                let told = self.told_rate.entry(client).or_insert(0);
                if *told == 0 || now.saturating_sub(*told) >= RATE_REFUSALS_EVERY_MS {
                    *told = now.max(1);
                    refuse(router, client, client_seq, &Shed::RateLimited.to_string());
                }
            }
            Err(shed) => refuse(router, client, client_seq, &shed.to_string()),
        }
    }

    /// `client`'s claim naming this gateway as the relay of `claimed`'s replies: checked,
    /// kept, and forwarded to every validator.
    fn claim(
        &mut self,
        router: &Router,
        (client, claimed, signature): (PublicKey, PublicKey, pbft_core::Signature),
        frame: Vec<u8>,
        now: u64,
    ) {
        if claimed != client {
            return refuse(
                router,
                client,
                0,
                "a client names a relay for its own replies only",
            );
        }
        let digest = relay_digest(&self.identity.chain, &self.identity.key);
        let valid = client
            .verifying_key()
            .and_then(|key| key.verify(&digest, &signature));
        if valid.is_err() {
            return refuse(
                router,
                client,
                0,
                "the relay claim's signature does not verify",
            );
        }
        if let Err(shed) = self.gateway.open(now, client) {
            return refuse(router, client, 0, &shed.to_string());
        }
        to_every_validator(router, &frame);
        self.claims.insert(client, frame);
    }

    /// Closes the sessions of clients that left, and forgets their claims.
    fn sweep(&mut self, router: &Router) {
        let gone: Vec<PublicKey> = self
            .gateway
            .clients()
            .filter(|key| !router.is_attached(key))
            .copied()
            .collect();
        for key in gone {
            self.gateway.close(&key);
            self.claims.remove(&key);
        }
        self.told_rate.clear();
    }

    /// Carries out one output; the gateway's ids are positions in the set of its epoch.
    fn route(&self, router: &Router, output: GatewayOutput) {
        match output {
            GatewayOutput::Transmit {
                to,
                client,
                again,
                bytes,
            } => {
                let Some(to) = self.gateway.validators().key(to).map(|k| k.public_key()) else {
                    return;
                };
                // The validator may have lost the claim with a connection: it goes first.
                if let Some(claim) = self.claims.get(&client).filter(|_| again) {
                    router.route(Transmit {
                        to: Target::Validator(to),
                        bytes: claim.clone(),
                        via: None,
                    });
                }
                router.route(Transmit {
                    to: Target::Validator(to),
                    bytes: ClientFrame::Message(bytes).encode(),
                    via: None,
                });
            }
            GatewayOutput::Answered {
                client,
                replies,
                chain,
                ..
            } => {
                // The changes first: the replies are signed in the last one's epoch.
                for change in chain {
                    let frame = ServerFrame::Message(Message::EpochChange(change).encode());
                    router.to_client(&client, &frame);
                }
                for reply in replies {
                    let frame = ServerFrame::Message(Message::Reply(reply).encode());
                    router.to_client(&client, &frame);
                }
            }
            GatewayOutput::Rejected {
                client, refusals, ..
            } => {
                for refusal in refusals {
                    let frame = ServerFrame::Message(Message::Refusal(refusal).encode());
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
}

fn to_every_validator(router: &Router, frame: &[u8]) {
    router.route(Transmit {
        to: Target::AllValidators,
        bytes: frame.to_vec(),
        via: None,
    });
}

fn refuse(router: &Router, client: PublicKey, client_seq: u64, reason: &str) {
    let frame = ServerFrame::Refused {
        client_seq,
        reason: reason.to_string(),
    };
    router.to_client(&client, &frame);
}
