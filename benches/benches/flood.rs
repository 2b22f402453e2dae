//! Honest throughput while one validator floods the others with view-change traffic.
//!
//! Four replicas wired in memory on one thread, real ed25519, the replicas' clock the wall
//! clock (ms since the run started, so time-based limits in the core see real time). Validator
//! 3 takes part in consensus like the others and, with `--attack`, also floods: after every
//! `FLOOD_EVERY` messages the cluster delivers it sends each other validator one message,
//! alternating between
//!
//! - a valid view change of its own for the next higher view, carrying a full window of valid
//!   prepared certificates (a validator holds real ones: it saw the prepares), and
//! - a new view for view 1 carrying a quorum of view changes with a full window each, relayed
//!   under its own signature instead of view 1's primary's.
//!
//! The flooder signs and encodes its messages before the clock starts (its own work runs on its
//! own machine); what is measured is what they cost the others: decoding them, and whatever
//! they are checked for.
//!
//! Prints committed ops/s without and with the flood, runs alternating (the machine's noise
//! is large; compare runs made back to back), and what the flooded replicas checked and
//! refused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pbft_core::testing::{
    chain, client_key, key_of, new_view, round_robin_request, validator_key, view_change, vote,
    vote_for,
};
use pbft_core::{
    Batch, Config, Destination, Keypair, Message, Output, Phase, Prepared, PublicKey, Replica,
    Request, ValidatorSet, Vote,
};

const VALIDATORS: usize = 4;
const FLOODER: usize = 3;
const CLIENTS: usize = 200;
const OP_BYTES: usize = 128;
const BATCH: usize = 100;
const OPS: usize = 10_000;
/// The flooder sends each other validator one message per this many messages delivered.
const FLOOD_EVERY: u64 = 10;
/// Runs of each kind, alternating.
const ROUNDS: usize = 3;
/// A run that has not finished by then reports what it committed.
const DEADLINE: Duration = Duration::from_secs(120);

/// View changes the flooder holds ready, for views 2, 3, ...: more than a run sends.
const FLOOD_VIEW_CHANGES: u64 = 400;

/// The flood's messages, signed and encoded before the clock starts: the flooder's own work
/// is not what is measured (it runs on its own machine).
struct Flood {
    view_changes: Vec<Vec<u8>>,
    new_view: Vec<u8>,
    sent: u64,
}

impl Flood {
    fn new(window: u64) -> Self {
        // A full window of prepared certificates from view 0: the primary's proposal and the
        // prepares of two backups for each seq.
        let prepared: Vec<Prepared> = (1..=window)
            .map(|seq| {
                let batch = Batch::of(vec![Request::new(
                    &chain(),
                    &client_key(0),
                    seq,
                    vec![seq as u8; 8],
                )]);
                Prepared {
                    proposal: vote(0, Phase::PrePrepare, (0, seq), &batch),
                    prepares: vec![
                        vote(1, Phase::Prepare, (0, seq), &batch),
                        vote(2, Phase::Prepare, (0, seq), &batch),
                    ],
                }
            })
            .collect();
        let changes = (0..3)
            .map(|signer| view_change(signer, 1, prepared.clone()))
            .collect();
        let proposals: Vec<Vote> = prepared
            .iter()
            .map(|p| vote_for(1, Phase::PrePrepare, (1, p.proposal.seq), p.proposal.digest))
            .collect();
        let new_view = Message::NewView(new_view(FLOODER, 1, changes, proposals)).encode();
        let view_changes = (2..2 + FLOOD_VIEW_CHANGES)
            .map(|view| Message::ViewChange(view_change(FLOODER, view, prepared.clone())).encode())
            .collect();
        Flood {
            view_changes,
            new_view,
            sent: 0,
        }
    }

    /// The next flood message (the view changes start over if a run outlasts them).
    fn next(&mut self) -> Vec<u8> {
        self.sent += 1;
        if self.sent.is_multiple_of(2) {
            return self.new_view.clone();
        }
        let index = (self.sent / 2) as usize % self.view_changes.len();
        self.view_changes[index].clone()
    }
}

struct Run {
    executed: u64,
    elapsed: Duration,
    /// Signatures the three flooded validators checked.
    verified: u64,
    /// Messages they refused.
    rejected: u64,
    flood_sent: u64,
    views_changed: u64,
}

fn run(attack: bool) -> Run {
    let mut config = Config::new(chain());
    config.max_batch_ops = BATCH;
    config.max_pending_requests = OPS + 1;
    let keypairs: Vec<Keypair> = (0..VALIDATORS).map(validator_key).collect();
    let keys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
    let set = ValidatorSet::new(0, &keys).expect("valid keys");
    let mut replicas: Vec<Replica> = keypairs
        .into_iter()
        .map(|keypair| Replica::new(config.clone(), set.clone(), keypair).expect("valid config"))
        .collect();
    let mut flood = Flood::new(config.window);
    // Clients sign before the clock starts: in a deployment they run elsewhere.
    let clients: Vec<Keypair> = (0..CLIENTS).map(client_key).collect();
    let requests: Vec<Request> = (0..OPS as u64)
        .map(|i| round_robin_request(&clients, i, OP_BYTES))
        .collect();
    let mut network: VecDeque<(usize, PublicKey, Vec<u8>)> = VecDeque::new();
    let start = Instant::now();
    let now = |start: Instant| start.elapsed().as_millis() as u64;
    for request in requests {
        replicas[0]
            .submit(now(start), request)
            .expect("the primary accepts the request");
    }
    drain(&mut replicas, 0, &keys, &mut network, now(start));
    let mut delivered = 0u64;
    let done = |replicas: &[Replica]| {
        replicas
            .iter()
            .all(|r| r.metrics().requests_executed >= OPS as u64)
    };
    while !done(&replicas) && start.elapsed() < DEADLINE {
        if let Some((to, from, bytes)) = network.pop_front() {
            let _ = replicas[to].handle_message(now(start), &from, &bytes);
            drain(&mut replicas, to, &keys, &mut network, now(start));
            delivered += 1;
            if attack && delivered.is_multiple_of(FLOOD_EVERY) {
                let bytes = flood.next();
                for victim in (0..VALIDATORS).filter(|&v| v != FLOODER) {
                    network.push_back((victim, key_of(FLOODER), bytes.clone()));
                }
            }
            continue;
        }
        // Nothing in flight: fire the timers that are due (waiting for the next one).
        let at = now(start);
        for index in 0..VALIDATORS {
            if replicas[index].poll_timeout().is_some_and(|t| t <= at) {
                replicas[index].handle_timeout(at);
                drain(&mut replicas, index, &keys, &mut network, at);
            }
        }
        if network.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let elapsed = start.elapsed();
    let victims = || replicas.iter().enumerate().filter(|(i, _)| *i != FLOODER);
    Run {
        executed: replicas
            .iter()
            .map(|r| r.metrics().requests_executed)
            .min()
            .unwrap_or(0),
        elapsed,
        verified: victims()
            .map(|(_, r)| r.metrics().signatures_verified)
            .sum(),
        rejected: victims().map(|(_, r)| r.metrics().rejected_total()).sum(),
        flood_sent: if attack { flood.sent * 3 } else { 0 },
        views_changed: victims().map(|(_, r)| r.metrics().views_changed).sum(),
    }
}

/// Hands validator `index`'s outputs to the network and executes its deliveries.
fn drain(
    replicas: &mut [Replica],
    index: usize,
    keys: &[PublicKey],
    network: &mut VecDeque<(usize, PublicKey, Vec<u8>)>,
    now: u64,
) {
    while let Some(output) = replicas[index].poll_output() {
        match output {
            Output::Send { to, bytes } => match to {
                Destination::Validator(id) => {
                    network.push_back((id.0 as usize, keys[index], bytes))
                }
                Destination::AllValidators => {
                    for peer in (0..VALIDATORS).filter(|&peer| peer != index) {
                        network.push_back((peer, keys[index], bytes.clone()));
                    }
                }
                Destination::Client(_) | Destination::Outside(_) => {}
            },
            Output::Deliver(delivery) => {
                let results = delivery
                    .execute
                    .iter()
                    .filter_map(|&i| delivery.batch.requests.get(i as usize))
                    .map(|request| request.op.clone())
                    .collect();
                let snapshot = delivery.checkpoint.then(Vec::new);
                replicas[index]
                    .executed(now, delivery.seq, results, snapshot)
                    .expect("executed in delivery order");
            }
            _ => {}
        }
    }
}

fn main() {
    println!(
        "flood: {VALIDATORS} validators in memory on one thread, real ed25519, wall-clock time; \
         {OPS} ops of {OP_BYTES} bytes from {CLIENTS} clients, batches of {BATCH}; with the \
         attack, validator {FLOODER} sends each other validator a view change (full window of \
         prepared certificates, ever higher views) or a forged new view, alternating, every \
         {FLOOD_EVERY} messages delivered"
    );
    println!(
        "{:>8} {:>7} {:>10} {:>9} {:>14} {:>12} {:>9} {:>7}",
        "attack", "ops", "ops/s", "secs", "verified/op", "flood msgs", "rejected", "views"
    );
    let mut figures: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for attack in [false, true] {
            let result = run(attack);
            let secs = result.elapsed.as_secs_f64();
            let rate = result.executed as f64 / secs;
            figures[usize::from(attack)].push(rate);
            println!(
                "{:>8} {:>7} {:>10.0} {:>9.2} {:>14.2} {:>12} {:>9} {:>7}",
                if attack { "flood" } else { "none" },
                result.executed,
                rate,
                secs,
                result.verified as f64 / result.executed.max(1) as f64,
                result.flood_sent,
                result.rejected,
                result.views_changed,
            );
        }
    }
    for (attack, mut rates) in figures.into_iter().enumerate() {
        rates.sort_by(f64::total_cmp);
        println!(
            "median committed ops/s {}: {:.0}",
            if attack == 1 {
                "with the flood"
            } else {
                "without attack"
            },
            rates[rates.len() / 2]
        );
    }
}
