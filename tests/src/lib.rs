//! pbft-sim: a deterministic cluster simulator for pbft-core.
//!
//! One seed fixes everything: keys, faults, message delays, loss, duplication, reordering and
//! partitions. Whole clusters of real `Replica`s and `Client`s run in one thread in virtual
//! time, and after every step the simulator checks agreement, validity, exactly-once execution
//! and QC validity; at the end, once the network has healed, it checks that every request
//! committed and every honest replica delivered every batch.

use std::collections::{BTreeMap, BTreeSet};

use pbft_core::{
    Batch, Client, ClientRecord, Config, Delivery, Destination, Digest, ExecutedState, Hasher,
    Keypair, Message, NewView, Output, PublicKey, Record, Replica, Request, Signature,
    ValidatorSet, ViewChange, Vote, verify_evidence, verify_inclusion, verify_qc,
};

pub mod cluster;

use pbft_core::testing::client_key;
/// The chain id and validator keys of every simulation: the shared test fixtures'.
pub use pbft_core::testing::{chain, validator_keys};

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
    /// Runs honestly, then stops for good (sends and receives nothing) at this virtual time.
    CrashAt(u64),
    /// Drops every request of client 0 it receives: as primary it never proposes them.
    Censor,
    /// Breaks a client signature in every batch it proposes.
    InvalidBatch,
    /// Sends view changes with its prepared certificates stripped and its view raised, new
    /// views with a re-proposal left out, and new views for views it does not lead.
    ForgeViewChange,
    /// Serves state transfers with corrupted manifests and chunks.
    BadState,
    /// Runs honestly, and while it leads also proposes other batches (real client requests,
    /// recombined, under its own valid signature) at seqs that already committed: at or
    /// below its peers' stable checkpoints, and at the seqs of the new view it sent.
    ReproposeCommitted,
}

/// The faults a backup may draw.
pub const BACKUP_FAULTS: [Fault; 7] = [
    Fault::Garbage,
    Fault::Replay,
    Fault::WrongKey,
    Fault::EquivocateVotes,
    Fault::Silent,
    Fault::ForgeViewChange,
    Fault::BadState,
];

/// What a run puts the cluster through, besides loss and partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// f Byzantine backups with random faults.
    ByzantineBackups,
    /// The primary crashes mid-run; f - 1 Byzantine backups.
    CrashedPrimary,
    /// The primary equivocates; f - 1 Byzantine backups.
    EquivocatingPrimary,
    /// The primary ignores one client; f - 1 Byzantine backups.
    CensoringPrimary,
    /// The primary proposes batches with a forged client signature; f - 1 Byzantine backups.
    InvalidBatchPrimary,
    /// The next primary forges view changes and new views, and the first primary is cut off
    /// for a while, so the view changes run through it.
    ForgedViewChanges,
    /// The first f primaries fail at once: view changes cascade.
    Cascading,
    /// Honest validators crash and restart from their records, the primary among them, while
    /// f - 1 backups are Byzantine.
    CrashRestart,
    /// Every honest validator crashes at once (those busy at a random point of their step,
    /// the rest between steps) and restarts from its records and its durable application
    /// store, some of them seconds after the others; f backups are Byzantine, and in half the
    /// runs a partition leaves some validators behind.
    WholeCluster,
    /// f + 1 honest validators crash and restart while the primary re-proposes committed seqs
    /// with other batches (`Fault::ReproposeCommitted`).
    RestartUnderReproposals,
}

/// Every kind, in the order seeds cycle through them.
pub const KINDS: [Kind; 10] = [
    Kind::ByzantineBackups,
    Kind::CrashedPrimary,
    Kind::EquivocatingPrimary,
    Kind::CensoringPrimary,
    Kind::InvalidBatchPrimary,
    Kind::ForgedViewChanges,
    Kind::Cascading,
    Kind::CrashRestart,
    Kind::WholeCluster,
    Kind::RestartUnderReproposals,
];

/// An honest validator that crashes at a random point of its first step at or after `at`
/// (possibly between a `Persist` and the `Send` after it) and restarts at `back` from the
/// records it persisted and its application store as of its last completed step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    /// The validator.
    pub node: usize,
    /// When it crashes, virtual ms.
    pub at: u64,
    /// When it restarts.
    pub back: u64,
    /// Crash at `at` + 50 ms between steps if it took no step since `at` (a whole-cluster
    /// crash takes the idle down too).
    pub surely: bool,
}

/// Validators cut off from everyone else (validators and clients) for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The validators on the small side.
    pub isolated: Vec<usize>,
    /// When the cut starts, virtual ms.
    pub from: u64,
    /// When it heals.
    pub until: u64,
}

/// What one run simulates.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// What the run puts the cluster through.
    pub kind: Kind,
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
    /// Chance (percent) that a message is lost.
    pub loss_percent: u64,
    /// Cuts that heal.
    pub partitions: Vec<Partition>,
    /// Honest validators that crash and restart from what they persisted.
    pub restarts: Vec<Restart>,
    /// Replica limits (batch size, window, ...).
    pub max_batch_ops: usize,
    /// Log window.
    pub window: u64,
    /// Checkpoint interval.
    pub checkpoint_interval: u64,
}

impl Scenario {
    /// The scenario for `seed`: the kinds take turns, everything else is drawn from the seed.
    pub fn for_seed(seed: u64, validators: usize) -> Self {
        let kind = KINDS[(seed % KINDS.len() as u64) as usize];
        Self::new(kind, seed, validators)
    }

    /// A random scenario of `kind`: f faulty validators in all, loss up to 20 %, delays,
    /// duplication and reordering, sometimes a partition that heals, and small batches,
    /// windows and checkpoint intervals so pipelining, buffering and garbage collection happen.
    pub fn new(kind: Kind, seed: u64, validators: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0x5ce7_a710);
        let f = (validators - 1) / 3;
        let mut faults = BTreeMap::new();
        let primary_fault = match kind {
            Kind::ByzantineBackups => None,
            Kind::CrashedPrimary => Some(Fault::CrashAt(rng.range(20, 300))),
            Kind::EquivocatingPrimary => Some(Fault::EquivocatingPrimary),
            Kind::CensoringPrimary => Some(Fault::Censor),
            Kind::InvalidBatchPrimary => Some(Fault::InvalidBatch),
            Kind::ForgedViewChanges => {
                faults.insert(1, Fault::ForgeViewChange);
                None
            }
            Kind::Cascading => {
                for next in 1..f {
                    faults.insert(next, Fault::Silent);
                }
                Some(Fault::CrashAt(rng.range(20, 300)))
            }
            Kind::CrashRestart | Kind::WholeCluster => None,
            Kind::RestartUnderReproposals => Some(Fault::ReproposeCommitted),
        };
        if let Some(fault) = primary_fault {
            faults.insert(0, fault);
        }
        let mut backups: Vec<usize> = (1..validators)
            .filter(|i| !faults.contains_key(i))
            .collect();
        while faults.len() < f {
            let index = (rng.next_u64() % backups.len() as u64) as usize;
            let replica = backups.swap_remove(index);
            faults.insert(replica, *rng.pick(&BACKUP_FAULTS));
        }
        let mut partitions = Vec::new();
        let crash = matches!(kind, Kind::CrashedPrimary | Kind::Cascading);
        if kind == Kind::ForgedViewChanges {
            // Cut the first primary off so the cluster must change view through the forger.
            let from = rng.range(0, 300);
            partitions.push(Partition {
                isolated: vec![0],
                from,
                until: from + rng.range(1_000, 4_000),
            });
        } else if !crash && rng.chance(50) {
            // Crash runs stay unpartitioned so their recovery time measures the crash alone.
            let from = rng.range(0, 2_000);
            let size = rng.range(1, f as u64) as usize;
            let mut isolated: Vec<usize> = (0..validators).collect();
            while isolated.len() > size {
                let index = (rng.next_u64() % isolated.len() as u64) as usize;
                isolated.swap_remove(index);
            }
            partitions.push(Partition {
                isolated,
                from,
                until: from + rng.range(200, 3_000),
            });
        }
        let mut restarts = Vec::new();
        // Crash-restart runs restart the primary or a backup once or twice; a quarter of the
        // other runs restart an honest backup on top of their faults (a temporary f + 1st
        // fault: only safety holds while it is down, liveness must return once it is back).
        // Crash runs go without, so their recovery time measures the crash alone.
        if kind == Kind::CrashRestart || (!crash && rng.chance(25)) {
            let honest: Vec<usize> = (0..validators)
                .filter(|i| !faults.contains_key(i))
                .collect();
            let node = match kind {
                Kind::CrashRestart if rng.chance(50) => 0,
                _ => *rng.pick(&honest),
            };
            let mut at = rng.range(20, 800);
            for _ in 0..rng.range(1, 2) {
                let back = at + rng.range(50, 2_000);
                restarts.push(Restart {
                    node,
                    at,
                    back,
                    surely: false,
                });
                at = back + rng.range(100, 1_500);
            }
        }
        if matches!(kind, Kind::WholeCluster | Kind::RestartUnderReproposals) {
            let mut honest: Vec<usize> = (0..validators)
                .filter(|i| !faults.contains_key(i))
                .collect();
            if kind == Kind::RestartUnderReproposals {
                while honest.len() > f + 1 {
                    let index = (rng.next_u64() % honest.len() as u64) as usize;
                    honest.swap_remove(index);
                }
            }
            let at = rng.range(100, 1_500);
            let back = at + rng.range(100, 1_500);
            for _ in 0..rng.range(1, 2) {
                let (at, back) = match restarts.last() {
                    Some(last) => {
                        let at = last.back + rng.range(2_000, 4_000);
                        (at, at + rng.range(100, 1_500))
                    }
                    None => (at, back),
                };
                for &node in &honest {
                    // Half the rounds bring everyone back together, the others stagger the
                    // restarts over up to 3 s.
                    let stagger = match rng.chance(50) {
                        true => rng.range(0, 3_000),
                        false => 0,
                    };
                    restarts.push(Restart {
                        node,
                        at,
                        back: back + stagger,
                        surely: true,
                    });
                }
            }
        }
        let low = rng.range(1, 5);
        let window = rng.range(2, 8);
        let mut clients = rng.range(1, 4) as usize;
        let mut max_batch_ops = rng.range(1, 8) as usize;
        if kind == Kind::EquivocatingPrimary {
            // Several clients and batches of several requests give it room to equivocate.
            clients = clients.max(3);
            max_batch_ops = max_batch_ops.max(3);
        }
        if kind == Kind::CensoringPrimary {
            clients = clients.max(2);
        }
        Scenario {
            kind,
            validators,
            faults,
            clients,
            requests_per_client: rng.range(2, 6) as usize,
            delay_ms: (low, low + rng.range(0, 30)),
            duplicate_percent: rng.range(0, 20),
            loss_percent: rng.range(0, 20),
            partitions,
            restarts,
            max_batch_ops,
            window,
            checkpoint_interval: rng.range(1, window),
        }
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
    /// Views honest replicas entered, summed.
    pub views_changed: u64,
    /// When the primary crashed at a time it was the primary: virtual ms from the crash to
    /// the first batch an honest replica committed in a later view.
    pub recovery_ms: Option<u64>,
    /// Validators restarted from their persisted records.
    pub restarts: u64,
    /// Checkpoint states fetched and installed.
    pub state_transfers: u64,
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
    ClientTimer {
        client: usize,
        at: u64,
    },
    Crash {
        node: NodeId,
    },
    /// An armed crash that found no step to interrupt happens now, between steps.
    CrashNow {
        node: NodeId,
    },
    Restart {
        node: NodeId,
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
    /// What the replica persisted (its write-ahead log), compacted at stable checkpoints.
    durable: Vec<Record>,
    /// Crashes at a random point of its next step.
    crash_armed: bool,
    /// Crashed, waiting to restart.
    down: bool,
    /// Every operation the application executed, in order: its snapshot.
    ops: Vec<(PublicKey, u64, Vec<u8>)>,
    /// The exactly-once table and executed batches, as a host keeps them beside its state.
    table: Table,
    /// The application store as of the last step completed: what survives a crash.
    store: Store,
    /// Executed or installed since the store was last written.
    dirty: bool,
}

/// The host's side of [`ExecutedState`]: kept from deliveries and installs.
#[derive(Clone, Default)]
struct Table {
    executed: u64,
    floor: u64,
    clients: BTreeMap<PublicKey, ClientRecord>,
    committed: BTreeMap<u64, pbft_core::Committed>,
    checkpoints: BTreeMap<u64, pbft_core::CheckpointState>,
}

/// What a validator's application store holds durably: the application (with what the
/// checker knows of it) and the table, as of the end of some step: always before the log is
/// compacted, otherwise at the end of a random 30 % of the steps that executed (a host that
/// commits its store lazily); a crash loses what came after, which the log replays.
#[derive(Clone, Default)]
struct Store {
    table: Table,
    state: Digest,
    ops: Vec<(PublicKey, u64, Vec<u8>)>,
    executed: BTreeSet<(PublicKey, u64)>,
    last_client_seq: BTreeMap<PublicKey, u64>,
}

impl Validator {
    /// The application: a hash chain over the operations, plus their log.
    fn apply(&mut self, client: PublicKey, client_seq: u64, op: &[u8]) {
        self.state = Hasher::new(b"sim/state")
            .digest(&self.state)
            .bytes(op)
            .finish();
        self.ops.push((client, client_seq, op.to_vec()));
    }
}

/// The application snapshot: each operation as key, number, length and bytes.
fn encode_app(ops: &[(PublicKey, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (client, client_seq, op) in ops {
        out.extend_from_slice(&client.0);
        out.extend_from_slice(&client_seq.to_le_bytes());
        out.extend_from_slice(&(op.len() as u32).to_le_bytes());
        out.extend_from_slice(op);
    }
    out
}

fn decode_app(mut bytes: &[u8]) -> Option<Vec<(PublicKey, u64, Vec<u8>)>> {
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let key: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
        let client_seq = u64::from_le_bytes(bytes.get(32..40)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(40..44)?.try_into().ok()?) as usize;
        let op = bytes.get(44..44 + len)?.to_vec();
        ops.push((PublicKey(key), client_seq, op));
        bytes = &bytes[44 + len..];
    }
    Some(ops)
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
    /// The primary's crash, once it happened: (time, the view it led).
    crash: Option<(u64, u64)>,
    /// The replicas' config, to restart them with.
    config: Config,
    /// Every statement an honest validator signed: (validator, phase, view, seq) → digest.
    signed: BTreeMap<(usize, pbft_core::Phase, u64, u64), Digest>,
    /// The application state after each seq, as the first honest replica computed it.
    states: BTreeMap<u64, Digest>,
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
        config.checkpoint_interval = scenario.checkpoint_interval;
        config.max_future_per_peer = 64;
        // Peers keep only a window of batches for replay, so a replica cut off or restarted
        // for long must fetch a checkpoint's state; small chunks make that several messages.
        config.retained_batches = scenario.window as usize;
        config.snapshot_chunk_bytes = 64;
        let replica_config = config.clone();
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
                    durable: Vec::new(),
                    crash_armed: false,
                    down: false,
                    ops: Vec::new(),
                    table: Table::default(),
                    store: Store::default(),
                    dirty: false,
                }
            })
            .collect();
        let clients: Vec<SimClient> = (0..scenario.clients)
            .map(|j| SimClient {
                client: Client::new(chain(), client_key(j), set.clone(), 1),
                remaining: scenario.requests_per_client,
                outstanding: None,
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
            crash: None,
            config: replica_config,
            signed: BTreeMap::new(),
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
        for restart in self.scenario.restarts.clone() {
            self.counter += 1;
            self.queue.insert(
                (restart.at, self.counter),
                Event::Crash { node: restart.node },
            );
            if restart.surely {
                self.counter += 1;
                self.queue.insert(
                    (restart.at + 50, self.counter),
                    Event::CrashNow { node: restart.node },
                );
            }
            self.counter += 1;
            self.queue.insert(
                (restart.back, self.counter),
                Event::Restart { node: restart.node },
            );
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
                Event::Crash { node } => self.validators[node].crash_armed = true,
                Event::CrashNow { node } => {
                    if self.validators[node].crash_armed {
                        self.crash(node);
                    }
                }
                Event::Restart { node } => self.restart(node),
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
            && self.scenario.restarts.iter().all(|r| r.back <= self.now);
        let answered = self
            .clients
            .iter()
            .all(|c| c.remaining == 0 && c.outstanding.is_none());
        healed
            && answered
            && self.validators.iter().all(|node| {
                node.fault.is_some()
                    || (node.replica.is_idle() && node.delivered == self.report.batches)
            })
    }

    fn is_down(&self, node: NodeId) -> bool {
        self.validators[node].down
            || matches!(self.validators[node].fault, Some(Fault::CrashAt(at)) if self.now >= at)
    }

    /// Brings a crashed validator back from its persisted records and its application store.
    fn restart(&mut self, index: NodeId) {
        let node = &mut self.validators[index];
        if !node.down {
            // It never took a step between the crash and now, so it never crashed.
            node.crash_armed = false;
            return;
        }
        let keypair = Keypair::from_seed(&node.keypair.seed());
        let table = &node.store.table;
        let executed = ExecutedState {
            executed: table.executed,
            client_floor: table.floor,
            clients: table.clients.values().cloned().collect(),
            committed: table.committed.values().cloned().collect(),
            checkpoints: table.checkpoints.values().cloned().collect(),
        };
        match Replica::restore(
            self.config.clone(),
            self.set.clone(),
            keypair,
            node.durable.iter().cloned(),
            executed,
        ) {
            Ok(replica) => node.replica = replica,
            Err(err) => {
                let what = format!("replica {index} cannot restore: {err}");
                self.violation(what);
                return;
            }
        }
        let node = &mut self.validators[index];
        node.down = false;
        let store = node.store.clone();
        node.state = store.state;
        node.ops = store.ops;
        node.executed = store.executed;
        node.last_client_seq = store.last_client_seq;
        node.delivered = store.table.executed;
        node.table = store.table;
        node.dirty = false;
        node.timer = None;
        self.report.restarts += 1;
        // As a host does on start: a first tick (the replica learns the time only from its
        // inputs), then carry out what the restore left (deliveries the log replays).
        self.validators[index].replica.handle_timeout(self.now);
        self.drain(index);
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

    fn client_timer(&mut self, index: usize, at: u64) {
        if self.clients[index].client.poll_timeout() != Some(at) {
            return;
        }
        if let Some(request) = self.clients[index].client.handle_timeout(self.now) {
            let bytes = Message::Request(request.clone()).encode();
            for validator in 0..self.validators.len() {
                self.send(validator, request.client, bytes.clone());
            }
        }
        self.schedule_client_timer(index);
    }

    fn schedule_client_timer(&mut self, index: usize) {
        if let Some(at) = self.clients[index].client.poll_timeout() {
            self.counter += 1;
            self.queue.insert(
                (at.max(self.now), self.counter),
                Event::ClientTimer { client: index, at },
            );
        }
    }

    /// Whether a cut separates `a` from `b` now (clients are never cut off).
    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        let n = self.validators.len();
        self.scenario.partitions.iter().any(|p| {
            let active = p.from <= self.now && self.now < p.until;
            let inside = |node: NodeId| node < n && p.isolated.contains(&node);
            active && inside(a) != inside(b)
        })
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
        let sender = self.node_of(&from);
        if sender.is_some_and(|sender| self.cut(sender, to))
            || self.rng.chance(self.scenario.loss_percent)
        {
            return;
        }
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

    /// The simulation node of a key: a validator or a client.
    fn node_of(&self, key: &PublicKey) -> Option<NodeId> {
        self.keys.iter().position(|k| k == key).or_else(|| {
            self.client_keys
                .iter()
                .position(|k| k == key)
                .map(|client| self.validators.len() + client)
        })
    }

    fn next_request(&mut self, index: usize) {
        let now = self.now;
        let client = &mut self.clients[index];
        if client.remaining == 0 {
            return;
        }
        client.remaining -= 1;
        let op = format!("client {index} op {}", client.remaining).into_bytes();
        let request = client.client.request(now, op);
        client.outstanding = Some(request.clone());
        self.submitted.insert(request.digest(&chain()));
        let from = request.client;
        let primary = client.client.primary().0 as usize;
        self.send(primary, from, Message::Request(request).encode());
        self.schedule_client_timer(index);
    }

    fn deliver(&mut self, to: NodeId, from: PublicKey, bytes: Vec<u8>) {
        if to >= self.validators.len() {
            self.client_receives(to - self.validators.len(), &bytes);
            return;
        }
        if self.is_down(to) {
            return;
        }
        let censored = self.client_keys[0];
        let node = &mut self.validators[to];
        if node.fault == Some(Fault::Censor)
            && let Ok(Message::Request(request)) = Message::decode(&bytes, usize::MAX)
            && request.client == censored
        {
            return;
        }
        let keeps = matches!(node.fault, Some(Fault::Replay | Fault::ForgeViewChange));
        if keeps && node.seen.len() < 256 {
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
        // By digest, as the QC certifies and a light client checks: a client's signature is
        // not part of what is agreed (a peer may serve the batch with another one).
        let digest = request.digest(&chain());
        let position = committed
            .batch
            .requests
            .iter()
            .position(|r| r.digest(&chain()) == digest);
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
        if self.validators[index].down {
            return;
        }
        // A validator armed to crash stops after a random number of this step's outputs:
        // possibly between a `Persist` and the `Send` it guards.
        let crash_after = match self.validators[index].crash_armed {
            true => Some(self.rng.range(0, 6)),
            false => None,
        };
        let mut processed = 0;
        let mut compact = false;
        while let Some(output) = self.validators[index].replica.poll_output() {
            if crash_after == Some(processed) {
                self.crash(index);
                return;
            }
            processed += 1;
            self.observe(index, &output);
            match output {
                Output::Persist(record) => {
                    if let Record::Signed(vote) = &record {
                        self.check_signed(index, vote);
                    }
                    compact |= matches!(record, Record::Stable(_));
                    self.validators[index].durable.push(record);
                }
                Output::Send { to, bytes } => {
                    self.check_sent(index, &bytes);
                    self.route(index, to, bytes)
                }
                Output::Deliver(delivery) => self.execute(index, delivery),
                Output::Install(install) => self.install(index, install),
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
        if crash_after.is_some() {
            self.crash(index);
            return;
        }
        if compact {
            // What a host does with its WAL after a stable checkpoint, and with the batches in
            // its store that no peer can still need.
            let node = &mut self.validators[index];
            node.durable = node.replica.durable_records();
            let keep_above = node
                .replica
                .stable_checkpoint()
                .seq
                .saturating_sub(self.config.retained_batches as u64);
            node.table.committed.retain(|&seq, _| seq > keep_above);
            let stable = node.replica.stable_checkpoint().seq;
            node.table.checkpoints.retain(|&seq, _| seq >= stable);
        }
        // The store commits durably before the log is compacted, and otherwise now and then:
        // it lags the log, whose redo records replay what it lacks after a crash.
        let lazy = self.rng.chance(70);
        let node = &mut self.validators[index];
        if compact || (node.dirty && !lazy) {
            // The host's durable commit, after its records.
            node.store = Store {
                table: node.table.clone(),
                state: node.state,
                ops: node.ops.clone(),
                executed: node.executed.clone(),
                last_client_seq: node.last_client_seq.clone(),
            };
            node.dirty = false;
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

    /// Replaces a validator's application with a fetched snapshot, and checks it against
    /// what the first honest replica to reach that seq computed.
    fn install(&mut self, index: NodeId, install: pbft_core::Install) {
        let Some(ops) = decode_app(&install.snapshot) else {
            self.violation(format!("replica {index} installed an undecodable snapshot"));
            return;
        };
        let node = &mut self.validators[index];
        node.state = Digest::default();
        node.ops.clear();
        node.executed.clear();
        node.last_client_seq.clear();
        for (client, client_seq, op) in ops {
            node.apply(client, client_seq, &op);
            node.executed.insert((client, client_seq));
            node.last_client_seq.insert(client, client_seq);
        }
        node.delivered = install.seq;
        node.table.executed = install.seq;
        node.table.floor = install.client_floor;
        node.table.clients = install
            .clients
            .iter()
            .map(|record| (record.client, record.clone()))
            .collect();
        node.table.committed.retain(|&seq, _| seq <= install.seq);
        node.table.checkpoints.retain(|&seq, _| seq <= install.seq);
        if let Some(state) = node.replica.checkpoint_state(install.seq) {
            node.table.checkpoints.insert(install.seq, state);
        }
        node.dirty = true;
        self.report.state_transfers += 1;
        let state = self.validators[index].state;
        match self.states.get(&install.seq) {
            Some(expected) if *expected != state => self.violation(format!(
                "replica {index} installed a state at seq {} no honest replica had",
                install.seq
            )),
            Some(_) => {}
            None => self.violation(format!(
                "replica {index} installed a state at seq {} before any honest replica executed it",
                install.seq
            )),
        }
    }

    /// The validator stops: its unsent outputs are lost, its persisted records stay.
    fn crash(&mut self, index: NodeId) {
        let node = &mut self.validators[index];
        while node.replica.poll_output().is_some() {}
        node.crash_armed = false;
        node.down = true;
        node.timer = None;
    }

    /// The no-double-signing invariant, across restarts: an honest validator never signs
    /// two digests for one (phase, view, seq).
    fn check_signed(&mut self, index: NodeId, vote: &Vote) {
        if self.validators[index].fault.is_some() || vote.replica.0 as usize != index {
            return;
        }
        let key = (index, vote.phase, vote.view, vote.seq);
        let first = *self.signed.entry(key).or_insert(vote.digest);
        if first != vote.digest {
            self.violation(format!(
                "replica {index} signed two digests for {:?} at view {} seq {}",
                vote.phase, vote.view, vote.seq
            ));
        }
    }

    /// The same invariant on what actually went on the wire.
    fn check_sent(&mut self, index: NodeId, bytes: &[u8]) {
        match Message::decode(bytes, usize::MAX) {
            Ok(Message::Vote(vote)) => self.check_signed(index, &vote),
            Ok(Message::PrePrepare(pre_prepare)) => self.check_signed(index, &pre_prepare.vote),
            Ok(Message::NewView(new_view)) => {
                for proposal in &new_view.proposals {
                    self.check_signed(index, proposal);
                }
            }
            _ => {}
        }
    }

    fn observe(&mut self, index: NodeId, output: &Output) {
        self.trace.u64(index as u64);
        match output {
            Output::Persist(Record::Signed(vote)) => {
                self.trace.bytes(&Message::Vote(vote.clone()).encode());
            }
            Output::Persist(Record::ViewChange(change)) => {
                self.trace.u64(change.view);
            }
            Output::Persist(Record::NewView(new_view)) => {
                self.trace.u64(new_view.view);
            }
            Output::Persist(Record::Prepared(prepared, _)) => {
                self.trace.u64(prepared.proposal.seq);
            }
            Output::Persist(Record::Stable(checkpoint)) => {
                self.trace.u64(checkpoint.seq);
            }
            Output::Persist(Record::Committed(certificate, _)) => {
                self.trace.u64(certificate.seq);
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
            Output::Install(install) => {
                self.trace.u64(install.seq).bytes(&install.snapshot);
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
        let honest = |fault| matches!(fault, None | Some(Fault::CrashAt(_)) | Some(Fault::Censor));
        if self.is_down(index) {
            return;
        }
        let fault = self.validators[index].fault;
        if honest(fault) {
            for target in targets {
                self.send(target, from, bytes.clone());
            }
            return;
        }
        let Some(fault) = fault else {
            return;
        };
        match fault {
            Fault::Silent | Fault::CrashAt(_) | Fault::Censor => {}
            Fault::InvalidBatch => {
                let bytes = match Message::decode(&bytes, usize::MAX) {
                    Ok(Message::PrePrepare(mut pre_prepare)) => {
                        // The request digest does not cover the signature: the batch digest
                        // and the primary's vote stay valid, only the client signature breaks.
                        if let Some(request) = pre_prepare.batch.requests.first_mut() {
                            request.signature.0[0] ^= 1;
                        }
                        Message::PrePrepare(pre_prepare).encode()
                    }
                    _ => bytes,
                };
                for target in targets {
                    self.send(target, from, bytes.clone());
                }
            }
            Fault::ForgeViewChange => self.forge_view_change(index, &targets, bytes),
            Fault::ReproposeCommitted => {
                for &target in &targets {
                    self.send(target, from, bytes.clone());
                }
                self.repropose_committed(index);
            }
            Fault::BadState => {
                let bytes = match Message::decode(&bytes, usize::MAX) {
                    Ok(Message::StateChunk(mut chunk)) => {
                        match chunk.bytes.first_mut() {
                            Some(first) => *first ^= 1,
                            None => chunk.bytes.push(0),
                        }
                        Message::StateChunk(chunk).encode()
                    }
                    Ok(Message::StateManifest(mut manifest)) => {
                        manifest.app_len += 1;
                        Message::StateManifest(manifest).encode()
                    }
                    _ => bytes,
                };
                for target in targets {
                    self.send(target, from, bytes.clone());
                }
            }
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

    /// While it leads its view: a proposal at a committed seq (possibly at or below the
    /// receivers' stable checkpoints, or one its new view re-proposed) of another batch made of
    /// real client requests, validly signed by it, to every peer.
    fn repropose_committed(&mut self, index: NodeId) {
        let view = self.validators[index].replica.view();
        if self.set.primary(view).0 as usize != index || !self.rng.chance(30) {
            return;
        }
        let Some(&highest) = self.committed.keys().next_back() else {
            return;
        };
        let seq = self.rng.range(1, highest);
        let other = self.rng.range(1, highest);
        let (Some(at), Some(mixed)) = (self.committed.get(&seq), self.committed.get(&other)) else {
            return;
        };
        let mut requests: Vec<Request> = at.batch.requests.clone();
        for request in &mixed.batch.requests {
            if !requests.contains(request) {
                requests.push(request.clone());
            }
        }
        requests.reverse();
        requests.truncate(self.scenario.max_batch_ops);
        let batch = Batch { requests };
        let digest = batch.digest(&chain());
        if batch.requests.is_empty() || digest == at.digest {
            return;
        }
        let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
        let vote = Vote::new(
            &chain(),
            0,
            pbft_core::Phase::PrePrepare,
            (view, seq),
            digest,
            pbft_core::ReplicaId(index as u16),
            &keypair,
        );
        let bytes = Message::PrePrepare(pbft_core::PrePrepare { vote, batch }).encode();
        let from = self.keys[index];
        for target in (0..self.validators.len()).filter(|&i| i != index) {
            self.send(target, from, bytes.clone());
        }
    }

    /// The forger: view changes stripped of their certificates with a raised view, new views
    /// missing a re-proposal, a new view of its own for the next view on every status, and
    /// old view changes and new views replayed. All signed with its own key, as a real
    /// Byzantine validator could.
    fn forge_view_change(&mut self, index: NodeId, targets: &[NodeId], bytes: Vec<u8>) {
        let from = self.keys[index];
        let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
        let id = pbft_core::ReplicaId(index as u16);
        let forged = match Message::decode(&bytes, usize::MAX) {
            Ok(Message::ViewChange(change)) => {
                let view = change.view + self.rng.range(0, 2);
                let stripped = ViewChange::new(
                    &chain(),
                    0,
                    (view, id),
                    change.checkpoint,
                    Vec::new(),
                    &keypair,
                );
                Some(Message::ViewChange(stripped).encode())
            }
            Ok(Message::NewView(mut new_view)) if !new_view.proposals.is_empty() => {
                new_view.proposals.pop();
                new_view.signature = keypair.sign(&new_view.signed_digest(&chain(), 0));
                Some(Message::NewView(new_view).encode())
            }
            Ok(Message::Status(status)) => {
                let view = status.view + 1;
                let change = ViewChange::new(
                    &chain(),
                    0,
                    (view, id),
                    pbft_core::StableCheckpoint::genesis(),
                    Vec::new(),
                    &keypair,
                );
                let mut new_view = NewView {
                    view,
                    view_changes: vec![change],
                    proposals: Vec::new(),
                    signature: Signature([0; 64]),
                };
                new_view.signature = keypair.sign(&new_view.signed_digest(&chain(), 0));
                for &target in targets {
                    self.send(target, from, Message::NewView(new_view.clone()).encode());
                }
                None
            }
            _ => None,
        };
        for &target in targets {
            self.send(
                target,
                from,
                forged.clone().unwrap_or_else(|| bytes.clone()),
            );
            let seen = &self.validators[index].seen;
            if !seen.is_empty() && self.rng.chance(10) {
                let old = self.rng.pick(seen).clone();
                self.send(target, from, old);
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
            checkpoint,
            forgotten,
            client_floor,
        } = delivery;
        if honest {
            self.check_delivery(index, seq, &batch, &certificate);
            if let Some((at, view)) = self.crash
                && certificate.view > view
                && view != u64::MAX
                && self.report.recovery_ms.is_none()
            {
                self.report.recovery_ms = Some(self.now - at);
            }
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
            node.apply(request.client, request.client_seq, &request.op);
            let result = node.state.0.to_vec();
            node.table.clients.insert(
                request.client,
                ClientRecord {
                    client: request.client,
                    client_seq: request.client_seq,
                    seq,
                    result: Some(result.clone()),
                },
            );
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
        let node = &mut self.validators[index];
        node.delivered = seq;
        for client in &forgotten {
            node.table.clients.remove(client);
        }
        node.table.floor = client_floor;
        node.table.executed = seq;
        node.table.committed.insert(
            seq,
            pbft_core::Committed {
                batch: batch.clone(),
                certificate: certificate.clone(),
            },
        );
        node.dirty = true;
        if honest {
            let state = self.validators[index].state;
            let first = *self.states.entry(seq).or_insert(state);
            if first != state {
                self.violation(format!(
                    "replica {index} reached another state at seq {seq}"
                ));
            }
        }
        let snapshot = checkpoint.then(|| encode_app(&self.validators[index].ops));
        if let Err(err) = self.validators[index]
            .replica
            .executed(self.now, seq, results, snapshot)
        {
            self.violation(format!("replica {index} refused its own execution: {err}"));
        }
        let node = &mut self.validators[index];
        if checkpoint && let Some(state) = node.replica.checkpoint_state(seq) {
            node.table.checkpoints.insert(seq, state);
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
        self.report.views_changed = self
            .validators
            .iter()
            .filter(|node| node.fault.is_none())
            .map(|node| node.replica.metrics().views_changed)
            .sum();
        {
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
pub fn replay_command(seed: u64, validators: usize) -> String {
    format!("cargo run --release -p pbft-sim -- --validators {validators} --seed {seed}")
}
