//! A closed-loop load generator: many clients, each with one request outstanding, over one
//! session to every validator (as a gateway would carry them), or through a gateway, each
//! client on a connection of its own ([`BenchOptions::via_gateway`]).
//!
//! Every request is signed before the clock starts: in a deployment clients sign on their
//! own machines, and here the signing would take the cores the validators need. The
//! report compares the throughput with the signature-bound limit of this machine: every
//! validator checks every client signature, so no cluster of `n` validators sharing
//! `cores` cores can order more than `cores / (n × cost of one check)` requests a second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pbft_core::{BatchVerifier, Client, Digest, Keypair, Message, PublicKey, ReplyCache, Request};
use pbft_host::config::{Network, random_seed};
use pbft_host::kv::Op;
use pbft_host::wire::{ClientFrame, ServerFrame};

use pbft_host::session::Session;

use crate::client::{Transport, connect_as, connect_over, first_client_seq};
use crate::transport::TransportError;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Clients, each with one request outstanding.
    pub concurrency: usize,
    /// Bytes of each operation (a put of a unique key).
    pub op_bytes: usize,
    /// How long to run (the run also ends when the signed requests run out).
    pub duration: Duration,
    /// Stop after this many operations instead.
    pub ops: Option<u64>,
    /// Print a progress line every second on stderr.
    pub progress: bool,
    /// What carries the load.
    pub transport: Transport,
    /// Send through this gateway (its key and address, QUIC) instead of to the validators;
    /// gateway-attested if the network is, end to end otherwise.
    pub via_gateway: Option<(PublicKey, SocketAddr)>,
    /// With a gateway: one more client floods it with this many requests a second while
    /// the load runs (forged signatures end to end; unsigned, far over its rate limit,
    /// gateway-attested).
    pub flood: u64,
}

/// How the bench's requests reach the validators, and who signs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Clients' signed requests straight to the validators.
    Direct,
    /// Clients' signed requests through a gateway, which checks and forwards them.
    GatewayEndToEnd,
    /// Unsigned requests through a gateway, which signs one root per batch.
    GatewayAttested,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Direct => "direct to the validators, every request signed by its client",
            Route::GatewayEndToEnd => {
                "through a gateway, end to end: every request signed by its client"
            }
            Route::GatewayAttested => {
                "through a gateway, gateway-attested: one gateway signature per batch"
            }
        })
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Operations completed (f + 1 matching signed replies).
    pub ops: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency percentiles in µs: p50, p95, p99, max.
    pub latency_us: [u64; 4],
    /// Requests signed before the clock started, and how long that took.
    pub presigned: (u64, Duration),
    /// Retransmissions after a client timeout.
    pub retransmissions: u64,
    /// Validators in the cluster.
    pub validators: usize,
    /// Cores of this machine.
    pub cores: usize,
    /// Measured cost of one signature check alone and in a batch of 64, in µs.
    pub verify_us: (f64, f64),
    /// How the requests went.
    pub route: Route,
    /// The flood, if one ran: requests sent, and the gateway's refusals of them by reason.
    pub flood: Option<(u64, BTreeMap<String, u64>)>,
}

impl BenchReport {
    /// Operations per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The signature-bound limit: cores ÷ (validators × batched check cost), ops/s.
    pub fn limit(&self) -> f64 {
        self.cores as f64 / (self.validators as f64 * self.verify_us.1 * 1e-6)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [p50, p95, p99, max] = self.latency_us.map(|us| us as f64 / 1000.0);
        writeln!(
            f,
            "throughput   {:.0} ops/s ({} ops in {:.1} s)",
            self.throughput(),
            self.ops,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "latency      p50 {p50:.1} ms  p95 {p95:.1} ms  p99 {p99:.1} ms  max {max:.1} ms"
        )?;
        writeln!(
            f,
            "signatures   {:.1} µs per check alone, {:.1} µs in a batch of 64 (fastest of 150 rounds, {} backend)",
            self.verify_us.0,
            self.verify_us.1,
            pbft_core::curve_backend()
        )?;
        writeln!(f, "route        {}", self.route)?;
        if self.route == Route::GatewayAttested {
            writeln!(
                f,
                "limit        not bound by client signatures: validators check one per batch"
            )?;
        } else {
            writeln!(
                f,
                "limit        {:.0} ops/s = {} cores / ({} validators × {:.1} µs); reached {:.0} %",
                self.limit(),
                self.cores,
                self.validators,
                self.verify_us.1,
                100.0 * self.throughput() / self.limit()
            )?;
        }
        if let Some((sent, refused)) = &self.flood {
            let reasons: Vec<String> = refused
                .iter()
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect();
            writeln!(
                f,
                "flood        {sent} requests from one client; the gateway refused: {}",
                if reasons.is_empty() {
                    "none".to_string()
                } else {
                    reasons.join(", ")
                }
            )?;
        }
        let made = match self.route {
            Route::GatewayAttested => "made (unsigned)",
            Route::Direct | Route::GatewayEndToEnd => "signed",
        };
        write!(
            f,
            "note         {} requests {made} before the clock started ({:.1} s); {} retransmissions",
            self.presigned.0,
            self.presigned.1.as_secs_f64(),
            self.retransmissions
        )
    }
}

/// Measures one signature check alone and per signature in a batch of 64, in µs, the way a
/// node checks them: the fastest of several rounds, so a busy moment of the machine does
/// not inflate the limit.
pub fn signature_cost() -> (f64, f64) {
    let keys: Vec<Keypair> = (0..64u8).map(|i| Keypair::from_seed(&[i; 32])).collect();
    let digest = Digest([7; 32]);
    let signed: Vec<_> = keys.iter().map(|k| (k, k.sign(&digest))).collect();
    let per_signature = |started: Instant| started.elapsed().as_secs_f64() * 1e6 / 64.0;
    let (mut single, mut batched) = (f64::MAX, f64::MAX);
    for _ in 0..150 {
        let started = Instant::now();
        for (key, signature) in &signed {
            let _ = key.verifying_key().verify(&digest, signature);
        }
        single = single.min(per_signature(started));
        let started = Instant::now();
        let mut batch = BatchVerifier::new();
        for (key, signature) in &signed {
            batch.queue(key.verifying_key(), &digest, signature);
        }
        let _ = batch.verify();
        batched = batched.min(per_signature(started));
    }
    (single, batched)
}

struct Loop {
    /// The client's key, which a gateway's connection for it authenticates as.
    keypair: Keypair,
    client: Client,
    /// Names the bench's session as this client's relay (see `ClientFrame::Relay`).
    relay: ClientFrame,
    signed: VecDeque<Request>,
    sent_at: Option<Instant>,
    /// Its link in a session through a gateway: one connection per client.
    link: usize,
}

fn put(client: usize, number: usize, op_bytes: usize) -> Vec<u8> {
    let key = format!("bench/{client}/{number}").into_bytes();
    let value = vec![b'v'; op_bytes.saturating_sub(key.len() + 4)];
    Op::Put { key, value }.encode()
}

/// Signs `per_client` requests for each of `concurrency` new clients, on every core (makes
/// them unsigned if `unsigned`). Each client's claim names `relay` as its replies' relay.
fn presign(
    network: &Network,
    options: &BenchOptions,
    (per_client, unsigned): (usize, bool),
    relay: &PublicKey,
) -> Vec<Loop> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let base = random_seed().unwrap_or([1; 32]);
    let first = first_client_seq();
    let make = |index: usize| {
        let mut seed = base;
        seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
        let keypair = Keypair::from_seed(&seed);
        let relay = ClientFrame::relay(&network.core.chain_id, &keypair, relay);
        let client = Client::new(
            network.core.chain_id,
            Keypair::from_seed(&seed),
            network.validators.clone(),
            first,
        );
        let mut client = match unsigned {
            true => client.unsigned(),
            false => client,
        };
        let signed = (0..per_client)
            .map(|n| client.sign(put(index, n, options.op_bytes)))
            .collect();
        Loop {
            keypair,
            client,
            relay,
            signed,
            sent_at: None,
            link: index,
        }
    };
    let chunk = options.concurrency.div_ceil(cores);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..options.concurrency)
            .step_by(chunk.max(1))
            .map(|from| {
                let to = (from + chunk).min(options.concurrency);
                scope.spawn(move || (from..to).map(make).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("signing thread"))
            .collect()
    })
}

/// Runs the load against `network` and reports what it measured.
pub async fn run(network: &Network, options: &BenchOptions) -> Result<BenchReport, TransportError> {
    let planned = options
        .ops
        .unwrap_or(25_000 * options.duration.as_secs().max(1));
    let per_client = (planned as usize).div_ceil(options.concurrency.max(1));
    let signing = Instant::now();
    if options.progress {
        // Signing takes seconds before anything else shows: say so, on the progress line.
        eprint!(
            "  signing {} requests before the clock starts...",
            per_client * options.concurrency.max(1)
        );
    }
    let route = match options.via_gateway {
        None => Route::Direct,
        Some(_) if network.attested() => Route::GatewayAttested,
        Some(_) => Route::GatewayEndToEnd,
    };
    let relay = Keypair::from_seed(&random_seed().unwrap_or([2; 32]));
    // Through a gateway, each client's replies come back through the gateway.
    let relay_key = options
        .via_gateway
        .map_or(relay.public_key(), |(key, _)| key);
    let unsigned = route == Route::GatewayAttested;
    let mut loops = presign(network, options, (per_client, unsigned), &relay_key);
    if options.progress {
        eprint!("\r{:60}\r", "");
    }
    let presigned = ((per_client * loops.len()) as u64, signing.elapsed());
    let by_key: HashMap<PublicKey, usize> = loops
        .iter()
        .enumerate()
        .map(|(index, l)| (l.client.public_key(), index))
        .collect();
    let mut session = match options.via_gateway {
        None => {
            let mut session = connect_over(options.transport, network, &relay)?;
            wait_until_ready(&mut session, network.addresses.len()).await;
            // Every validator learns that this session relays each client's replies, then
            // answers a status query after them (frames on a link arrive in order).
            for l in &loops {
                session.broadcast(&l.relay);
            }
            session
        }
        Some(gateway) => {
            let keypairs: Vec<Keypair> = loops
                .iter()
                .map(|l| Keypair::from_seed(&l.keypair.seed()))
                .collect();
            let session = connect_as(network, gateway, &keypairs)?;
            // End to end, each client's claim goes first (the gateway forwards it to every
            // validator); attested, the gateway's own signature routes the replies.
            if route == Route::GatewayEndToEnd {
                for (index, l) in loops.iter().enumerate() {
                    session.send(index, &l.relay);
                }
            }
            session
        }
    };
    let links = session.validators();
    wait_until_ready(&mut session, links).await;

    let flood = match options.via_gateway {
        Some(gateway) if options.flood > 0 => Some(Flood::start(network, gateway, options.flood)?),
        _ => None,
    };
    // Measured with the cluster up and idle, just before the clock starts.
    let verify_us = signature_cost();
    let max_reply = network.core.max_message_bytes;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let start = Instant::now();
    let now_ms = |at: Instant| at.duration_since(start).as_millis() as u64 + 1;
    let send = |session: &Session, l: &mut Loop, at: Instant| -> bool {
        let Some(request) = l.signed.pop_front() else {
            return false;
        };
        l.client.track(now_ms(at), request.clone());
        l.sent_at = Some(at);
        let link = match route {
            Route::Direct => l.client.primary().0 as usize,
            Route::GatewayEndToEnd | Route::GatewayAttested => l.link,
        };
        session.send(
            link,
            &ClientFrame::Message(Message::Request(request).encode()),
        )
    };
    for l in &mut loops {
        send(&session, l, Instant::now());
    }
    // Replies of one batch share a validator's signature: checked once for all clients.
    let mut verified = ReplyCache::new(4096);
    let mut done = 0u64;
    let mut retransmissions = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_progress = Instant::now();
    let mut exhausted = false;
    loop {
        tokio::select! {
            frame = session.recv() => {
                let Some((_, ServerFrame::Message(bytes))) = frame else { continue };
                let Ok(Message::Reply(reply)) = Message::decode(&bytes, max_reply) else { continue };
                let Some(&index) = by_key.get(&reply.client) else { continue };
                let l = &mut loops[index];
                if let Ok(Some(_)) = l.client.handle_reply_cached(&bytes, &mut verified) {
                    let now = Instant::now();
                    if let Some(sent) = l.sent_at.take() {
                        let _ = latency.record(now.duration_since(sent).as_micros() as u64);
                    }
                    done += 1;
                    exhausted |= !send(&session, l, now) && l.signed.is_empty();
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for l in &mut loops {
                    if let Some(request) = l.client.handle_timeout(now_ms(now)) {
                        retransmissions += 1;
                        let frame = ClientFrame::Message(Message::Request(request).encode());
                        // A gateway retransmits to every validator itself.
                        match route {
                            Route::Direct => session.broadcast(&frame),
                            _ => {
                                session.send(l.link, &frame);
                            }
                        }
                    }
                }
                if options.progress && now.duration_since(last_progress) >= Duration::from_secs(1) {
                    last_progress = now;
                    let secs = now.duration_since(start).as_secs_f64();
                    eprint!("\r  {secs:4.0} s  {done:>9} ops  {:>8.0} ops/s", done as f64 / secs);
                }
            }
        }
        let elapsed = start.elapsed();
        let finished = match options.ops {
            Some(ops) => done >= ops,
            None => elapsed >= options.duration,
        };
        if finished || exhausted {
            break;
        }
    }
    if options.progress {
        eprintln!();
    }
    let elapsed = start.elapsed();
    let flood = match flood {
        Some(flood) => Some(flood.stop().await),
        None => None,
    };
    Ok(BenchReport {
        ops: done,
        elapsed,
        latency_us: [
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.95),
            latency.value_at_quantile(0.99),
            latency.max(),
        ],
        presigned,
        retransmissions,
        validators: network.addresses.len(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        verify_us,
        route,
        flood,
    })
}

/// One client flooding a gateway on a task of its own: `rate` requests a second, in bursts
/// every 10 ms, forged (end to end) or unsigned (attested), each with a number of its own.
struct Flood {
    task: tokio::task::JoinHandle<(u64, BTreeMap<String, u64>)>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Flood {
    fn start(
        network: &Network,
        gateway: (PublicKey, SocketAddr),
        rate: u64,
    ) -> Result<Flood, TransportError> {
        let keypair = Keypair::from_seed(&random_seed().unwrap_or([3; 32]));
        let mut session = crate::client::connect_to(network, &[gateway], &keypair)?;
        let client = keypair.public_key();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut sent, mut refused) = (0u64, BTreeMap::<String, u64>::new());
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = rate.div_ceil(100);
            let first = first_client_seq();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    frame = session.recv() => match frame {
                        Some((_, ServerFrame::Refused { reason, .. })) => {
                            *refused.entry(reason).or_default() += 1;
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = tick.tick() => {
                        for _ in 0..per_tick {
                            // Its signature is no signature: a forgery end to end, and
                            // nothing anyone checks gateway-attested.
                            let request = Request {
                                client,
                                client_seq: first + sent,
                                op: put(usize::MAX, sent as usize, 128),
                                signature: pbft_core::Signature([0; 64]),
                                attestation: None,
                            };
                            let frame = ClientFrame::Message(Message::Request(request).encode());
                            session.send(0, &frame);
                            sent += 1;
                        }
                    }
                }
            }
            (sent, refused)
        });
        Ok(Flood { task, stop })
    }

    /// Stops the flood: what it sent, and what the gateway refused, by reason.
    async fn stop(self) -> (u64, BTreeMap<String, u64>) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Waits (up to 30 s) until each of the session's `links` answers a status query: a
/// validator with its status, a gateway with its refusal (it answers requests only).
pub async fn wait_until_ready(session: &mut Session, links: usize) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ready = vec![false; links];
    while !ready.iter().all(|r| *r) {
        for (index, ready) in ready.iter().enumerate() {
            if !ready {
                session.send(index, &ClientFrame::Status);
            }
        }
        let round = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            tokio::select! {
                frame = session.recv() => {
                    if let Some((index, ServerFrame::Status(_) | ServerFrame::Refused { .. })) = frame
                        && let Some(ready) = ready.get_mut(index)
                    {
                        *ready = true;
                    }
                }
                () = tokio::time::sleep_until(round) => break,
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return;
        }
    }
}
