//! pbft-sim: a deterministic cluster simulator for pbft-core.
//!
//! One seed fixes everything: keys, faults, message delays, duplication and reordering. Whole
//! clusters of real `Replica`s and `Client`s run in one thread in virtual time, and after every
//! step the simulator checks agreement, validity, exactly-once execution and QC validity; at the
//! end it checks that every request committed (when the scenario is meant to be live).

use std::collections::{BTreeMap, BTreeSet};

use pbft_core::{
    Batch, ChainId, Client, Config, Delivery, Destination, Digest, Hasher, Keypair, Message,
    Output, PublicKey, Record, Replica, Request, ValidatorSet, Vote, verify_evidence,
    verify_inclusion, verify_qc,
};

pub mod cluster;

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high]`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// A uniformly chosen element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// How a Byzantine validator misbehaves. It runs an honest core underneath and corrupts
/// what that core sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Sends random bytes instead of its messages.
    Garbage,
    /// Sends its messages, and replays old ones (its own and others') to random peers.
    Replay,
    /// Signs its votes with a key that is not its own.
    WrongKey,
    /// Sends each vote to some peers and a vote for another digest to the others, and
    /// both to one peer, so equivocation is seen and reported.
    EquivocateVotes,
    /// Sends nothing.
    Silent,
    /// As primary, proposes different batches for one seq to different backups (and both
    /// to one of them).
    EquivocatingPrimary,
}

/// The faults a backup may draw.
pub const BACKUP_FAULTS: [Fault; 5] = [
    Fault::Garbage,
    Fault::Replay,
    Fault::WrongKey,
    Fault::EquivocateVotes,
    Fault::Silent,
];

/// What one run simulates.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Number of validators.
    pub validators: usize,
    /// Faulty validators by index (at most f of them for the run to be meaningful).
    pub faults: BTreeMap<usize, Fault>,
    /// Closed-loop clients.
    pub clients: usize,
    /// Requests each client sends, one after another.
    pub requests_per_client: usize,
    /// One-way message delay range, in virtual ms.
    pub delay_ms: (u64, u64),
    /// Chance (percent) that a message is delivered twice.
    pub duplicate_percent: u64,
    /// Whether every request must commit by the end (false when the primary is faulty:
    /// without view change that is not live, and only safety is checked).
    pub expect_liveness: bool,
    /// Replica limits (batch size, window, ...).
    pub max_batch_ops: usize,
    /// Log window.
    pub window: u64,
}

impl Scenario {
    /// A random scenario for `seed`: f Byzantine backups with random faults, random delays,
    /// duplication and reordering, small batches and window so pipelining and buffering
    /// ahead of the window happen.
    pub fn random_byzantine_backups(seed: u64, validators: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0x5ce7_a710);
        let f = (validators - 1) / 3;
        let mut backups: Vec<usize> = (1..validators).collect();
        let mut faults = BTreeMap::new();
        for _ in 0..f {
            let index = (rng.next_u64() % backups.len() as u64) as usize;
            let replica = backups.swap_remove(index);
            faults.insert(replica, *rng.pick(&BACKUP_FAULTS));
        }
        let low = rng.range(1, 5);
        Scenario {
            validators,
            faults,
            clients: rng.range(1, 4) as usize,
            requests_per_client: rng.range(2, 6) as usize,
            delay_ms: (low, low + rng.range(0, 30)),
            duplicate_percent: rng.range(0, 20),
            expect_liveness: true,
            max_batch_ops: rng.range(1, 8) as usize,
            window: rng.range(2, 8),
        }
    }

    /// A primary that equivocates, plus up to f - 1 faulty backups: safety only.
    pub fn equivocating_primary(seed: u64, validators: usize) -> Self {
        let mut scenario = Self::random_byzantine_backups(seed, validators);
        let f = (validators - 1) / 3;
        while scenario.faults.len() >= f.max(1) {
            let last = *scenario.faults.keys().next_back().unwrap_or(&0);
            scenario.faults.remove(&last);
        }
        scenario.faults.insert(0, Fault::EquivocatingPrimary);
        // Several clients and batches of several requests give the primary room to equivocate.
        scenario.clients = scenario.clients.max(3);
        scenario.max_batch_ops = scenario.max_batch_ops.max(3);
        scenario.expect_liveness = false;
        scenario
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Invariant violations, each with the virtual time it was seen.
    pub violations: Vec<String>,
    /// Requests whose result clients accepted.
    pub requests_completed: u64,
    /// Batches delivered (highest seq any honest replica delivered).
    pub batches: u64,
    /// Evidence outputs that verified.
    pub evidence: u64,
    /// Messages put on the simulated network.
    pub messages: u64,
    /// Virtual time at the end, ms.
    pub virtual_ms: u64,
    /// Digest of every output of every node, in order: equal across runs of one seed.
    pub trace: Digest,
}

/// A node id in the simulation: validators first, then clients.
type NodeId = usize;

enum Event {
    Message {
        to: NodeId,
        from: PublicKey,
        bytes: Vec<u8>,
    },
    Timer {
        node: NodeId,
        at: u64,
    },
}

struct Validator {
    replica: Replica,
    keypair: Keypair,
    fault: Option<Fault>,
    /// Application state: a hash chain over executed operations.
    state: Digest,
    /// Messages seen, for a replaying fault (bounded).
    seen: Vec<Vec<u8>>,
    timer: Option<u64>,
    /// (client, client_seq) executed, to check exactly-once.
    executed: BTreeSet<(PublicKey, u64)>,
    last_client_seq: BTreeMap<PublicKey, u64>,
    delivered: u64,
}

struct SimClient {
    client: Client,
    remaining: usize,
    outstanding: Option<Request>,
}

/// A committed batch as the first honest replica delivered it.
struct Committed {
    digest: Digest,
    batch: Batch,
    certificate: pbft_core::QuorumCertificate,
}

/// The validator keys of a simulated cluster (the same for every seed).
pub fn validator_keys(n: usize) -> Vec<Keypair> {
    (0..n)
        .map(|i| Keypair::from_seed(&Hasher::new(b"sim/validator").u64(i as u64).finish().0))
        .collect()
}

/// The chain id every simulation uses.
pub fn chain() -> ChainId {
    ChainId::from_name("pbft-sim")
}

/// The simulation: nodes, network and checker.
pub struct Simulation {
    scenario: Scenario,
    rng: Rng,
    now: u64,
    counter: u64,
    queue: BTreeMap<(u64, u64), Event>,
    validators: Vec<Validator>,
    clients: Vec<SimClient>,
    set: ValidatorSet,
    keys: Vec<PublicKey>,
    client_keys: Vec<PublicKey>,
    submitted: BTreeSet<Digest>,
    committed: BTreeMap<u64, Committed>,
    /// Result digest per (client, client_seq), as the first honest replica computed it.
    results: BTreeMap<(PublicKey, u64), Digest>,
    report: Report,
    trace: Hasher,
}

/// Virtual time after which a run stops.
const TIME_LIMIT_MS: u64 = 120_000;

impl Simulation {
    /// Sets up the cluster for `seed`.
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        let keypairs = validator_keys(scenario.validators);
        let keys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
        let set = ValidatorSet::new(0, &keys).expect("simulated keys are valid");
        let mut config = Config::new(chain());
        config.max_batch_ops = scenario.max_batch_ops;
        config.window = scenario.window;
        config.max_future_per_peer = 64;
        let validators = keypairs
            .into_iter()
            .enumerate()
            .map(|(index, keypair)| {
                let same = Keypair::from_seed(&keypair.seed());
                Validator {
                    replica: Replica::new(config.clone(), set.clone(), same).expect("valid config"),
                    keypair,
                    fault: scenario.faults.get(&index).copied(),
                    state: Digest::default(),
                    seen: Vec::new(),
                    timer: None,
                    executed: BTreeSet::new(),
                    last_client_seq: BTreeMap::new(),
                    delivered: 0,
                }
            })
            .collect();
        let clients: Vec<SimClient> = (0..scenario.clients)
            .map(|j| {
                let keypair =
                    Keypair::from_seed(&Hasher::new(b"sim/client").u64(j as u64).finish().0);
                SimClient {
                    client: Client::new(chain(), keypair, set.clone(), 1),
                    remaining: scenario.requests_per_client,
                    outstanding: None,
                }
            })
            .collect();
        let client_keys = clients.iter().map(|c| c.client.public_key()).collect();
        Simulation {
            rng: Rng::new(seed),
            now: 0,
            counter: 0,
            queue: BTreeMap::new(),
            validators,
            clients,
            set,
            keys,
            client_keys,
            submitted: BTreeSet::new(),
            committed: BTreeMap::new(),
            results: BTreeMap::new(),
            report: Report {
                seed,
                ..Report::default()
            },
            trace: Hasher::new(b"sim/trace"),
            scenario,
        }
    }

    /// Runs to quiescence (or the time limit) and returns what it found.
    pub fn run(mut self) -> Report {
        for client in 0..self.clients.len() {
            self.next_request(client);
        }
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > TIME_LIMIT_MS {
                break;
            }
            self.now = at;
            match event {
                Event::Message { to, from, bytes } => self.deliver(to, from, bytes),
                Event::Timer { node, at } => {
                    if self.validators[node].timer == Some(at) {
                        self.validators[node].timer = None;
                        self.validators[node].replica.handle_timeout(self.now);
                        self.drain(node);
                    }
                }
            }
        }
        self.finish()
    }

    fn violation(&mut self, what: String) {
        let line = format!("t={}ms: {what}", self.now);
        self.report.violations.push(line);
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.counter += 1;
        self.queue.insert((self.now + delay, self.counter), event);
    }

    fn send(&mut self, to: NodeId, from: PublicKey, bytes: Vec<u8>) {
        let copies = if self.rng.chance(self.scenario.duplicate_percent) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (low, high) = self.scenario.delay_ms;
            let delay = self.rng.range(low, high);
            self.report.messages += 1;
            self.schedule(
                delay,
                Event::Message {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn next_request(&mut self, index: usize) {
        let client = &mut self.clients[index];
        if client.remaining == 0 {
            return;
        }
        client.remaining -= 1;
        let op = format!("client {index} op {}", client.remaining).into_bytes();
        let request = client.client.request(op);
        client.outstanding = Some(request.clone());
        self.submitted.insert(request.digest(&chain()));
        let from = request.client;
        let primary = self.set.primary(0).0 as usize;
        self.send(primary, from, Message::Request(request).encode());
    }

    fn deliver(&mut self, to: NodeId, from: PublicKey, bytes: Vec<u8>) {
        if to >= self.validators.len() {
            self.client_receives(to - self.validators.len(), &bytes);
            return;
        }
        let node = &mut self.validators[to];
        if node.fault == Some(Fault::Replay) && node.seen.len() < 256 {
            node.seen.push(bytes.clone());
        }
        // Rejections are expected (garbage, replays, duplicates); they are counted, not fatal.
        let _ = node.replica.handle_message(self.now, &from, &bytes);
        self.drain(to);
    }

    fn client_receives(&mut self, index: usize, bytes: &[u8]) {
        let Ok(Some(outcome)) = self.clients[index].client.handle_reply(bytes) else {
            return;
        };
        let client = &mut self.clients[index];
        let Some(request) = client.outstanding.take() else {
            return;
        };
        self.report.requests_completed += 1;
        let digest = Hasher::new(b"sim/result").bytes(&outcome.result).finish();
        match self.results.get(&(request.client, request.client_seq)) {
            Some(expected) if *expected == digest => {}
            _ => self.violation(format!(
                "client {index} accepted a result no honest replica computed for request {}",
                request.client_seq
            )),
        }
        self.check_inclusion(&request, outcome.seq);
        self.next_request(index);
    }

    /// A light client's check: the request is in the batch the QC at `seq` certifies.
    fn check_inclusion(&mut self, request: &Request, seq: u64) {
        let Some(committed) = self.committed.get(&seq) else {
            self.violation(format!(
                "client accepted a result at seq {seq}, which never committed"
            ));
            return;
        };
        let position = committed.batch.requests.iter().position(|r| r == request);
        let proof = position.and_then(|index| committed.batch.prove(&chain(), index));
        let ok = proof.is_some_and(|proof| {
            verify_qc(&chain(), &self.set, &committed.certificate).is_ok()
                && verify_inclusion(&committed.certificate, request, &proof).is_ok()
        });
        if !ok {
            self.violation(format!(
                "no QC + inclusion proof for a request at seq {seq}"
            ));
        }
    }

    fn drain(&mut self, index: NodeId) {
        while let Some(output) = self.validators[index].replica.poll_output() {
            self.observe(index, &output);
            match output {
                Output::Persist(_) => {}
                Output::Send { to, bytes } => self.route(index, to, bytes),
                Output::Deliver(delivery) => self.execute(index, delivery),
                Output::Evidence(evidence) => {
                    let culprit = evidence.second.replica.0 as usize;
                    match verify_evidence(&chain(), &self.set, &evidence) {
                        Ok(()) if self.validators[culprit].fault.is_some() => {
                            self.report.evidence += 1
                        }
                        Ok(()) => {
                            self.violation(format!("evidence against honest validator {culprit}"))
                        }
                        Err(err) => self
                            .violation(format!("replica {index} reported invalid evidence: {err}")),
                    }
                }
            }
        }
        let timeout = self.validators[index].replica.poll_timeout();
        if timeout.is_some() && timeout != self.validators[index].timer {
            let at = timeout.unwrap_or_default().max(self.now);
            self.validators[index].timer = Some(at);
            self.counter += 1;
            self.queue
                .insert((at, self.counter), Event::Timer { node: index, at });
        }
    }

    fn observe(&mut self, index: NodeId, output: &Output) {
        self.trace.u64(index as u64);
        match output {
            Output::Persist(Record::Signed(vote)) => {
                self.trace.bytes(&Message::Vote(vote.clone()).encode());
            }
            Output::Send { bytes, .. } => {
                self.trace.bytes(bytes);
            }
            Output::Deliver(delivery) => {
                self.trace
                    .u64(delivery.seq)
                    .digest(&delivery.certificate.digest);
            }
            Output::Evidence(evidence) => {
                self.trace.u64(evidence.second.seq);
            }
        }
    }

    /// Puts a validator's message on the network, corrupted if the validator is faulty.
    fn route(&mut self, index: NodeId, to: Destination, bytes: Vec<u8>) {
        let from = self.keys[index];
        let targets: Vec<NodeId> = match to {
            Destination::Validator(id) => vec![id.0 as usize],
            Destination::AllValidators => {
                (0..self.validators.len()).filter(|&i| i != index).collect()
            }
            Destination::Client(key) => match self.client_keys.iter().position(|k| *k == key) {
                Some(client) => vec![self.validators.len() + client],
                None => return,
            },
        };
        let Some(fault) = self.validators[index].fault else {
            for target in targets {
                self.send(target, from, bytes.clone());
            }
            return;
        };
        match fault {
            Fault::Silent => {}
            Fault::Garbage => {
                for target in targets {
                    let len = self.rng.range(0, 300) as usize;
                    let mut junk: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                    if let Some(first) = junk.first_mut()
                        && self.rng.chance(50)
                    {
                        *first = pbft_core::PROTOCOL_VERSION;
                    }
                    self.send(target, from, junk);
                }
            }
            Fault::Replay => {
                for target in targets {
                    self.send(target, from, bytes.clone());
                    let seen = &self.validators[index].seen;
                    if !seen.is_empty() {
                        let old = self.rng.pick(seen).clone();
                        let peer = self.rng.range(0, self.validators.len() as u64 - 1) as usize;
                        self.send(peer, from, old);
                    }
                }
            }
            Fault::WrongKey => {
                let forger = Keypair::from_seed(&[0xee; 32]);
                let forged = self.rewrite_vote(&bytes, |vote| resign(vote, &forger));
                for target in targets {
                    self.send(
                        target,
                        from,
                        forged.clone().unwrap_or_else(|| bytes.clone()),
                    );
                }
            }
            Fault::EquivocateVotes => {
                let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
                let other = self.rewrite_vote(&bytes, |vote| {
                    vote.digest = Hasher::new(b"sim/fake").digest(&vote.digest).finish();
                    resign(vote, &keypair);
                });
                self.split_send(&targets, from, &bytes, other.as_deref());
            }
            Fault::EquivocatingPrimary => {
                let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
                let other = match Message::decode(&bytes, usize::MAX) {
                    Ok(Message::PrePrepare(mut pre_prepare))
                        if pre_prepare.batch.requests.len() > 1 =>
                    {
                        pre_prepare.batch.requests.reverse();
                        pre_prepare.vote.digest = pre_prepare.batch.digest(&chain());
                        resign(&mut pre_prepare.vote, &keypair);
                        Some(Message::PrePrepare(pre_prepare).encode())
                    }
                    // A batch of one has no valid alternative from the same requests.
                    _ => None,
                };
                self.split_send(&targets, from, &bytes, other.as_deref());
            }
        }
    }

    /// Equivocation on the wire: odd targets get `other`, even ones `bytes`, and the first
    /// target gets both, so someone holds the evidence.
    fn split_send(
        &mut self,
        targets: &[NodeId],
        from: PublicKey,
        bytes: &[u8],
        other: Option<&[u8]>,
    ) {
        for (position, &target) in targets.iter().enumerate() {
            match other {
                Some(other) if position % 2 == 1 => self.send(target, from, other.to_vec()),
                Some(other) if position == 0 => {
                    self.send(target, from, bytes.to_vec());
                    self.send(target, from, other.to_vec());
                }
                _ => self.send(target, from, bytes.to_vec()),
            }
        }
    }

    fn rewrite_vote(&self, bytes: &[u8], change: impl FnOnce(&mut Vote)) -> Option<Vec<u8>> {
        match Message::decode(bytes, usize::MAX) {
            Ok(Message::Vote(mut vote)) => {
                change(&mut vote);
                Some(Message::Vote(vote).encode())
            }
            _ => None,
        }
    }

    /// Executes a delivery on a validator's application and checks the invariants.
    fn execute(&mut self, index: NodeId, delivery: Delivery) {
        let honest = self.validators[index].fault.is_none();
        let Delivery {
            seq,
            batch,
            certificate,
            execute,
        } = delivery;
        if honest {
            self.check_delivery(index, seq, &batch, &certificate);
        }
        let mut results = Vec::with_capacity(execute.len());
        for position in execute {
            let Some(request) = batch.requests.get(position as usize) else {
                self.violation(format!(
                    "replica {index} asked to execute a request outside the batch"
                ));
                continue;
            };
            let node = &mut self.validators[index];
            node.state = Hasher::new(b"sim/state")
                .digest(&node.state)
                .bytes(&request.op)
                .finish();
            let result = node.state.0.to_vec();
            if honest {
                let key = (request.client, request.client_seq);
                if !node.executed.insert(key) {
                    self.violation(format!(
                        "replica {index} executed client request {} twice",
                        request.client_seq
                    ));
                }
                let node = &mut self.validators[index];
                let last = node
                    .last_client_seq
                    .insert(request.client, request.client_seq);
                if last.is_some_and(|last| last >= request.client_seq) {
                    self.violation(format!(
                        "replica {index} executed a client's requests out of order"
                    ));
                }
                let digest = Hasher::new(b"sim/result").bytes(&result).finish();
                let expected = *self.results.entry(key).or_insert(digest);
                if expected != digest {
                    self.violation(format!("replicas computed different results at seq {seq}"));
                }
            }
            results.push(result);
        }
        self.validators[index].delivered = seq;
        if let Err(err) = self.validators[index]
            .replica
            .executed(self.now, seq, results)
        {
            self.violation(format!("replica {index} refused its own execution: {err}"));
        }
    }

    fn check_delivery(
        &mut self,
        index: NodeId,
        seq: u64,
        batch: &Batch,
        qc: &pbft_core::QuorumCertificate,
    ) {
        let digest = batch.digest(&chain());
        if self.validators[index].delivered + 1 != seq {
            self.violation(format!("replica {index} delivered seq {seq} out of order"));
        }
        if qc.digest != digest || qc.seq != seq {
            self.violation(format!(
                "replica {index}: QC at seq {seq} does not match its batch"
            ));
        }
        if let Err(err) = verify_qc(&chain(), &self.set, qc) {
            self.violation(format!(
                "replica {index}: QC at seq {seq} does not verify: {err}"
            ));
        }
        for request in &batch.requests {
            if !self.submitted.contains(&request.digest(&chain())) {
                self.violation(format!(
                    "replica {index} delivered a request no client signed"
                ));
            }
        }
        match self.committed.get(&seq) {
            Some(first) if first.digest != digest => {
                self.violation(format!(
                    "agreement: two honest replicas delivered different batches at seq {seq}"
                ));
            }
            Some(_) => {}
            None => {
                self.committed.insert(
                    seq,
                    Committed {
                        digest,
                        batch: batch.clone(),
                        certificate: qc.clone(),
                    },
                );
                self.report.batches = self.report.batches.max(seq);
            }
        }
    }

    fn finish(mut self) -> Report {
        self.report.virtual_ms = self.now;
        if self.scenario.expect_liveness {
            let expected = (self.scenario.clients * self.scenario.requests_per_client) as u64;
            if self.report.requests_completed != expected {
                self.violation(format!(
                    "liveness: {} of {expected} requests completed",
                    self.report.requests_completed
                ));
            }
            let highest = self.report.batches;
            for index in 0..self.validators.len() {
                let node = &self.validators[index];
                if node.fault.is_none() && node.delivered != highest {
                    let delivered = node.delivered;
                    self.violation(format!(
                        "replica {index} delivered up to {delivered} of {highest}"
                    ));
                }
            }
        }
        if std::env::var_os("PBFT_SIM_DEBUG").is_some() {
            for (index, node) in self.validators.iter().enumerate() {
                eprintln!(
                    "replica {index} ({:?}): {:?}",
                    node.fault,
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

/// Re-signs a vote with `key` (which may not be its signer's).
fn resign(vote: &mut Vote, key: &Keypair) {
    let fresh = Vote::new(
        &chain(),
        0,
        vote.phase,
        (vote.view, vote.seq),
        vote.digest,
        vote.replica,
        key,
    );
    vote.signature = fresh.signature;
}

/// Runs `seed` twice and reports a violation if the two runs differ in any output.
pub fn run_checked(seed: u64, scenario: &Scenario) -> Report {
    let first = Simulation::new(seed, scenario.clone()).run();
    let second = Simulation::new(seed, scenario.clone()).run();
    let mut report = first;
    if report.trace != second.trace {
        report
            .violations
            .push("determinism: two runs of the seed produced different outputs".to_string());
    }
    report
}

/// The command that replays one seed.
pub fn replay_command(seed: u64, validators: usize, byzantine_primary: bool) -> String {
    let primary = if byzantine_primary {
        " --byzantine-primary"
    } else {
        ""
    };
    format!("cargo run --release -p pbft-sim -- --validators {validators} --seed {seed}{primary}")
}
