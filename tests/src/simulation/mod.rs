//! The simulation: the event loop over virtual time, and the state of the run.
//!
//! Its parts, one job each: [`network`] carries messages (loss, duplication, delay,
//! partitions) and routes what validators send; [`validator`] is the host of each simulated
//! validator (its application, store, crashes and restarts); [`clients`] are the closed-loop
//! clients, and [`gateway`] the gateway they may send through; [`byzantine`] corrupts what faulty validators send as scripted, [`generated`] as a
//! seeded policy draws; [`checks`] holds the
//! invariants checked after every step and at the end.
//!
//! Every random draw comes from one [`Rng`] in the order the events happen, so moving code
//! between these modules must keep the order of calls: the golden traces check that it did.

use std::collections::{BTreeMap, BTreeSet};

use pbft_core::testing::client_key;
use pbft_core::{
    Client, Config, Digest, Hasher, Keypair, PublicKey, Replica, ReplicaId, ValidatorSet,
};

use crate::report::Report;
use crate::{Fault, Rng, Scenario, chain, validator_keys};

mod byzantine;
mod checks;
mod clients;
mod epochs;
mod gateway;
mod generated;
mod network;
mod operator;
mod rogue_gateway;
mod validator;

use checks::Committed;
use clients::SimClient;
use gateway::SimGateway;
use rogue_gateway::RogueGateway;
use validator::Validator;

/// A node in the simulation: the validators' replicas first (each validator in id order, then
/// the second replica of each twinned validator), then the clients, then the gateway if the
/// scenario has one.
type NodeId = usize;

/// Something that happens at a point of virtual time.
enum Event {
    /// A message arrives.
    Message {
        to: NodeId,
        from: PublicKey,
        bytes: Vec<u8>,
    },
    /// A validator's timer set for `at` fires, unless it was reset since.
    Timer { node: NodeId, at: u64 },
    /// A client's timer set for `at` fires, unless it was reset since.
    ClientTimer { client: usize, at: u64 },
    /// The gateway's timer set for `at` fires, unless it was reset since.
    GatewayTimer { at: u64 },
    /// The rogue gateway acts.
    RogueGateway,
    /// A validator is armed to crash at a random point of its next step.
    Crash { node: NodeId },
    /// An armed crash that found no step to interrupt happens now, between steps.
    CrashNow { node: NodeId },
    /// A crashed validator restarts from its records and store.
    Restart { node: NodeId },
    /// A copy of a validator's records and store is taken (an operator's backup).
    Copy { node: NodeId },
    /// A message a generated adversary held back goes on the network now.
    Send {
        to: NodeId,
        from: NodeId,
        bytes: Vec<u8>,
    },
    /// The operator's next reconfiguration is due.
    Operator,
    /// A validator the set gained joins.
    Join { node: NodeId },
    /// A validator's host finished a checkpoint's snapshot, unless the validator crashed
    /// since (`life` counts its crashes).
    Snapshot {
        node: NodeId,
        life: u64,
        taken: pbft_core::TakenSnapshot,
    },
}

/// The simulation: nodes, network and checker.
pub struct Simulation {
    scenario: Scenario,
    /// Every random draw of the run, in order.
    rng: Rng,
    /// Virtual time, ms.
    now: u64,
    /// Events scheduled so far: breaks ties in the queue by the order they were scheduled.
    counter: u64,
    /// What happens next, by (time, counter).
    queue: BTreeMap<(u64, u64), Event>,
    validators: Vec<Validator>,
    clients: Vec<SimClient>,
    /// The gateway the clients send through, in a scenario [`Scenario::via_gateway`].
    gateway: Option<SimGateway>,
    /// The Byzantine gateway, in a scenario [`Scenario::rogue_gateway`].
    rogue: Option<RogueGateway>,
    /// The genesis validator set.
    set: ValidatorSet,
    /// Each epoch's set, as the first validator to enter it proved it: ids in an epoch's
    /// statements are positions in its set, node indices are positions in the genesis one.
    sets: BTreeMap<u64, ValidatorSet>,
    /// The validators' keys, by index.
    keys: Vec<PublicKey>,
    /// The clients' keys, by index.
    client_keys: Vec<PublicKey>,
    /// The digest of every request a client signed: what a client signs, so a delivered
    /// request whose digest is here is an operation its client signed. Not its signature
    /// bytes: a batch a replica fetched or took by digest may carry others under the same
    /// digest and QC (seed 2054 at n = 10 delivers such a copy), which prove nothing more.
    submitted: BTreeSet<Digest>,
    /// The digest of every request a listed gateway attested that no client sent (the
    /// rogue gateway's, in gateway-attested mode): it may execute, its gateway answerable.
    attested: BTreeSet<Digest>,
    /// Every batch committed, as the first honest replica delivered it.
    committed: BTreeMap<u64, Committed>,
    /// Result digest per (client, client_seq), as the first honest replica computed it.
    results: BTreeMap<(PublicKey, u64), Digest>,
    /// The digest of the request executed under each (client, client_seq), as the first
    /// honest replica executed it: a client must accept only its own request's result.
    executed_requests: BTreeMap<(PublicKey, u64), Digest>,
    report: Report,
    /// Every output of every validator, in order ([`crate::report::observe`]).
    trace: Hasher,
    /// The primary's crash, once it happened: (time, the view it led).
    crash: Option<(u64, u64)>,
    /// The replicas' config, to restart them with.
    config: Config,
    /// When each (view, seq) was first proposed: virtual ms of the first signed pre-prepare.
    proposed_at: BTreeMap<(u64, u64), u64>,
    /// Every statement an honest validator signed: (validator, phase, view, seq) → digest.
    signed: BTreeMap<(usize, pbft_core::Phase, u64, u64), Digest>,
    /// The statements of `signed` that went on the wire: a validator restored from an old
    /// copy of its data dir lost the others with its log, and no one else ever held them.
    sent: BTreeSet<(usize, pbft_core::Phase, u64, u64)>,
    /// The application state after each seq, as the first honest replica computed it.
    states: BTreeMap<u64, Digest>,
    /// Per offender (validator id): when it first sent two conflicting statements, or when a
    /// replica first reported evidence against it, whichever came first (virtual ms).
    conflict_at: BTreeMap<u16, u64>,
    /// Offenders an honest replica reported evidence against: each must see it committed.
    reported: BTreeSet<u16>,
    /// Per offender: when evidence against it first committed at an honest replica (ms).
    convicted_at: BTreeMap<u16, u64>,
    /// Per offender: the epoch of the first committed evidence against it.
    convicted_in: BTreeMap<u16, u64>,
    /// The operator of a reconfiguration run.
    operator: operator::Operator,
    /// When each link (from, to) is free again, virtual ms: a link of limited bandwidth
    /// ([`Scenario::link_bytes_per_ms`]) sends one message after the other.
    link_free_at: BTreeMap<(NodeId, NodeId), u64>,
}

/// Virtual time after which a run stops.
const TIME_LIMIT_MS: u64 = 120_000;

impl Simulation {
    /// Sets up the cluster for `seed`.
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        Self::build(seed, scenario, Config::new(chain()))
    }

    /// Sets up the cluster for `seed` with every replica built with the planted bug
    /// `mutant`, for the mutation test.
    #[cfg(feature = "mutants")]
    pub fn with_mutant(seed: u64, scenario: Scenario, mutant: pbft_core::mutants::Mutant) -> Self {
        let mut config = Config::new(chain());
        config.mutant = Some(mutant);
        Self::build(seed, scenario, config)
    }

    /// Sets up the cluster for `seed`, its replicas' limits set on `config`.
    fn build(seed: u64, scenario: Scenario, mut config: Config) -> Self {
        // The genesis validators' keys, then the spares'.
        let keypairs = validator_keys(scenario.validators + scenario.spares);
        let keys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
        let set =
            ValidatorSet::new(0, &keys[..scenario.validators]).expect("simulated keys are valid");
        config.max_batch_ops = scenario.max_batch_ops;
        config.window = scenario.window;
        config.checkpoint_interval = scenario.checkpoint_interval;
        config.fast_path = scenario.fast_path;
        config.max_future_per_peer = 64;
        // Peers keep only a window of batches for replay, so a replica cut off or restarted
        // for long must fetch a checkpoint's state; small chunks make that several messages.
        config.retained_batches = scenario.window as usize;
        config.snapshot_chunk_bytes = 64;
        if scenario.attested {
            config.attesting_gateways = vec![
                SimGateway::keypair().public_key(),
                RogueGateway::keypair().public_key(),
            ];
        }
        let replica_config = config.clone();
        // Each validator, then the spares, then the second replica of each twin: the same key,
        // its own state.
        let twinned = scenario
            .twins
            .iter()
            .flat_map(|twins| twins.twinned.clone());
        let validators = (0..scenario.validators + scenario.spares)
            .chain(twinned)
            .map(|id| {
                let keypair = Keypair::from_seed(&keypairs[id].seed());
                let same = Keypair::from_seed(&keypair.seed());
                if id >= scenario.validators && id < scenario.validators + scenario.spares {
                    return Validator::standby(id, &config, keypair);
                }
                let replica =
                    Replica::new(config.clone(), set.clone(), same).expect("valid config");
                Validator::new(id, replica, keypair, scenario.faults.get(&id).copied())
            })
            .collect();
        // Below the honest clients' numbers, a rogue gateway's forgeries take none of theirs.
        let first_seq = match scenario.rogue_gateway {
            true => rogue_gateway::HONEST_FIRST_SEQ,
            false => 1,
        };
        let clients: Vec<SimClient> = (0..scenario.clients)
            .map(|j| SimClient {
                client: Client::new(chain(), client_key(j), set.clone(), first_seq),
                remaining: scenario.requests_per_client,
                outstanding: None,
            })
            .collect();
        let client_keys: Vec<PublicKey> = clients.iter().map(|c| c.client.public_key()).collect();
        let gateway = scenario
            .via_gateway
            .then(|| SimGateway::new(&set, &client_keys, scenario.attested));
        let rogue = scenario.rogue_gateway.then(|| RogueGateway::new(seed));
        Simulation {
            rng: Rng::new(seed),
            now: 0,
            counter: 0,
            queue: BTreeMap::new(),
            validators,
            clients,
            gateway,
            rogue,
            sets: BTreeMap::from([(0, set.clone())]),
            set,
            keys,
            client_keys,
            submitted: BTreeSet::new(),
            attested: BTreeSet::new(),
            committed: BTreeMap::new(),
            results: BTreeMap::new(),
            executed_requests: BTreeMap::new(),
            report: Report {
                seed,
                ..Report::default()
            },
            trace: Hasher::new(b"sim/trace"),
            crash: None,
            config: replica_config,
            proposed_at: BTreeMap::new(),
            signed: BTreeMap::new(),
            sent: BTreeSet::new(),
            conflict_at: BTreeMap::new(),
            reported: BTreeSet::new(),
            convicted_at: BTreeMap::new(),
            convicted_in: BTreeMap::new(),
            operator: operator::Operator::new(&scenario.reconfigurations),
            link_free_at: BTreeMap::new(),
            states: BTreeMap::new(),
            scenario,
        }
    }

    /// Runs until every request committed, the network healed and every honest replica is
    /// idle and up to date (or the time limit), and returns what it found.
    pub fn run(mut self) -> Report {
        for client in 0..self.clients.len() {
            self.next_request(client);
        }
        for index in 0..self.validators.len() {
            self.drain(index);
        }
        if self.rogue.is_some() {
            self.schedule_at(1, Event::RogueGateway);
        }
        if let Some(first) = self.scenario.reconfigurations.first() {
            self.schedule_at(first.after_ms, Event::Operator);
        }
        for restart in self.scenario.restarts.clone() {
            self.schedule_at(restart.at, Event::Crash { node: restart.node });
            if restart.surely {
                self.schedule_at(restart.at + 50, Event::CrashNow { node: restart.node });
            }
            self.schedule_at(restart.back, Event::Restart { node: restart.node });
            if let Some(at) = restart.from_copy {
                self.schedule_at(at, Event::Copy { node: restart.node });
            }
        }
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > TIME_LIMIT_MS {
                break;
            }
            self.now = at;
            self.note_crash();
            match event {
                Event::Message { to, from, bytes } => self.deliver(to, from, bytes),
                Event::Timer { node, at } => {
                    if self.validators[node].timer == Some(at) && !self.is_down(node) {
                        self.validators[node].timer = None;
                        self.validators[node].replica.handle_timeout(self.now);
                        self.drain(node);
                    }
                }
                Event::ClientTimer { client, at } => self.client_timer(client, at),
                Event::GatewayTimer { at } => self.gateway_timer(at),
                Event::RogueGateway => self.rogue_acts(),
                Event::Crash { node } => self.validators[node].crash_armed = true,
                Event::CrashNow { node } => {
                    if self.validators[node].crash_armed {
                        self.crash(node);
                    }
                }
                Event::Restart { node } => self.restart(node),
                Event::Copy { node } => self.copy(node),
                Event::Send { to, from, bytes } => self.send(to, from, bytes),
                Event::Snapshot { node, life, taken } => self.snapshot_taken(node, life, taken),
                Event::Operator => self.operator_due(),
                Event::Join { node } => self.join(node),
            }
            if self.settled() {
                break;
            }
        }
        self.finish()
    }

    /// Whether the run has nothing left to show: every request answered, every cut healed,
    /// every honest replica idle and at the highest delivered seq.
    fn settled(&self) -> bool {
        let healed = self.scenario.partitions.iter().all(|p| p.until <= self.now)
            && self.scenario.links.iter().all(|cut| cut.until <= self.now)
            && self.scenario.restarts.iter().all(|r| r.back <= self.now);
        let answered = self
            .clients
            .iter()
            .all(|c| c.remaining == 0 && c.outstanding.is_none());
        healed
            && answered
            && self.operator.pending.is_empty()
            && self.operator.joins_due == 0
            && self.validators.iter().all(|node| {
                !node.held_to_liveness()
                    || (node.replica.is_idle()
                        && node.delivered == self.report.batches
                        && node.replica.scheduled_epoch().is_none())
            })
    }

    /// The replicas that run validator `id`'s key: the validator, and its twin if it has one.
    fn instances_of(&self, id: usize) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.validators.len()).filter(move |&node| self.validators[node].id == id)
    }

    /// The genesis index of validator `id` of `set` (an epoch's set): where its key is in
    /// the genesis set.
    fn genesis_index(&self, set: &ValidatorSet, id: ReplicaId) -> Option<usize> {
        let key = set.key(id)?.public_key();
        self.keys.iter().position(|k| *k == key)
    }

    /// The replicas that run validator `id` of `set`.
    fn instances_in(&self, set: &ValidatorSet, id: ReplicaId) -> Vec<NodeId> {
        match self.genesis_index(set, id) {
            Some(index) => self.instances_of(index).collect(),
            None => Vec::new(),
        }
    }

    /// Whether a validator is crashed (waiting to restart, or stopped for good).
    fn is_down(&self, node: NodeId) -> bool {
        self.validators[node].down
            || matches!(self.validators[node].fault, Some(Fault::CrashAt(at)) if self.now >= at)
    }

    /// Records the moment a crashing validator stops, and whether it was the primary then.
    fn note_crash(&mut self) {
        if self.crash.is_some() {
            return;
        }
        for index in 0..self.validators.len() {
            if let Some(Fault::CrashAt(at)) = self.validators[index].fault
                && self.now >= at
            {
                let view = self
                    .validators
                    .iter()
                    .filter(|node| node.fault.is_none())
                    .map(|node| node.replica.view())
                    .max()
                    .unwrap_or(0);
                let leading = self.set.primary(view).0 as usize == index;
                // A crash of a validator that no longer leads measures nothing.
                self.crash = Some((at, if leading { view } else { u64::MAX }));
            }
        }
    }

    /// Records how long the cluster took to recover from the primary's crash: until an honest
    /// replica delivers a batch certified in a later view than the one the primary led.
    fn note_recovery(&mut self, certified_in: u64) {
        if let Some((at, view)) = self.crash
            && certified_in > view
            && view != u64::MAX
            && self.report.recovery_ms.is_none()
        {
            self.report.recovery_ms = Some(self.now - at);
        }
    }

    /// Schedules `event` `delay` ms from now.
    fn schedule(&mut self, delay: u64, event: Event) {
        self.schedule_at(self.now + delay, event);
    }

    /// Schedules `event` at virtual time `at`, after every event already scheduled then.
    fn schedule_at(&mut self, at: u64, event: Event) {
        self.counter += 1;
        self.queue.insert((at, self.counter), event);
    }

    /// Ends the run: the final checks, the totals, and the trace's last entries.
    fn finish(mut self) -> Report {
        self.report.virtual_ms = self.now;
        self.report.views_changed = self
            .validators
            .iter()
            .filter(|node| node.fault.is_none())
            .map(|node| node.replica.metrics().views_changed)
            .sum();
        self.report.batches_fetched = self
            .validators
            .iter()
            .filter(|node| node.fault.is_none())
            .map(|node| node.replica.metrics().batches_fetched)
            .sum();
        self.report.gateway = self.gateway.as_ref().map(|gateway| {
            let metrics = gateway.gateway.metrics();
            (
                metrics.requests_answered,
                metrics.retransmissions,
                metrics.replies_rejected,
            )
        });
        if std::env::var_os("PBFT_SIM_TRACE_ERRORS").is_some() {
            for (index, node) in self.validators.iter().enumerate() {
                let r = &node.replica;
                eprintln!(
                    "END replica {index}: view {} in_view {} executed {} stable {} recovering {} withheld {} signed {}",
                    r.view(),
                    r.in_view(),
                    r.executed_seq(),
                    r.stable_checkpoint().seq,
                    r.is_recovering(),
                    r.metrics().withheld_in_recovery,
                    r.metrics().signatures_created
                );
            }
        }
        self.check_liveness();
        self.check_convictions();
        self.check_removals();
        self.check_reconfigured();
        if std::env::var_os("PBFT_SIM_DEBUG").is_some() {
            for (index, node) in self.validators.iter().enumerate() {
                eprintln!(
                    "replica {index} ({:?}): {:?}\n  {:?}",
                    node.fault,
                    node.replica,
                    node.replica.metrics()
                );
            }
        }
        for index in 0..self.validators.len() {
            if self.validators[index].fault.is_none() {
                let metrics = self.validators[index].replica.metrics().clone();
                self.trace
                    .u64(metrics.signatures_verified)
                    .u64(metrics.rejected_total());
            }
        }
        self.report.trace = self.trace.finish();
        self.report
    }
}
