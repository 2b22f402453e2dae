//! What a run puts the cluster through: the kind of run, which validators are faulty and how,
//! the network's delays, loss and partitions, and the crashes and restarts, all drawn from the
//! seed.

use std::collections::BTreeMap;

use crate::Rng;

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
    /// Runs honestly, but its application corrupts the first operation it executes at or
    /// after this virtual time (a bad disk, a bit flip): its state at the next checkpoint is
    /// not the quorum's. Its core must notice, fetch the stable state, and go on from it;
    /// once it installed that state it is checked as an honest validator again, and held to
    /// liveness. No scenario kind draws it; tests set it.
    DivergeAt(u64),
    /// Runs honestly, and with every message it sends also sends each target a chunk of the
    /// last state a peer fetched from it, which nobody asked for and which does not verify,
    /// and its stable checkpoint certificate: trying to make a fetching replica drop good peers
    /// and restart its transfer.
    SpamState,
    /// Runs honestly, but serves state-transfer chunks one at a time, each 90 ms after the
    /// last (just inside the 100 ms retransmit interval): alive, and as slow as it can be.
    DripFeed,
    /// Runs as two honest replicas sharing this validator's key (Twins, Bano et al. 2020): the
    /// second instance is placed by the run's [`Twins`] plan, so equivocation, double votes and
    /// forgotten state come from real protocol code.
    Twin,
    /// Runs an honest core whose every output is mutated by a seeded policy
    /// ([`crate::Policy`]): dropped, delayed, duplicated, sent to some, re-signed with changed
    /// fields, replayed from its history or re-proposed at any seq.
    Generated(crate::Policy),
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
    /// f validators run as twins and the network is cut per view by a [`Twins`] plan
    /// ([`Scenario::twins`]).
    Twins,
    /// f validators are generated adversaries ([`Fault::Generated`]) while any subset of the
    /// honest ones, the whole cluster included, crashes and restarts ([`Scenario::generated`]).
    Generated,
    /// An honest backup is restored from an old copy of its data dir (records and store,
    /// taken several checkpoints before it crashes) while the primary re-proposes committed
    /// seqs with other batches (`Fault::ReproposeCommitted`): rollback protection must keep
    /// it from signing a statement that conflicts with one it signed after the copy.
    Rollback,
}

/// Every kind, in the order seeds cycle through them.
pub const KINDS: [Kind; 11] = [
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
    Kind::Rollback,
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
    /// Restart from a copy of its records and store taken at this virtual time instead of
    /// from what it had at the crash: an operator restoring an old backup.
    pub from_copy: Option<u64>,
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

/// A one-way cut: nothing validator `from` sends reaches validator `to` until `until`
/// (virtual ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkCut {
    /// The sender.
    pub from: usize,
    /// The receiver.
    pub to: usize,
    /// When the link heals.
    pub until: u64,
}

impl Partition {
    /// A cut drawn from `rng`: it starts within 2 s, isolates 1 to `f` of `candidates` and
    /// heals 0.2 to 3 s later.
    pub fn draw(rng: &mut Rng, mut candidates: Vec<usize>, f: usize) -> Self {
        let from = rng.range(0, 2_000);
        let size = rng.range(1, f as u64) as usize;
        rng.keep(&mut candidates, size);
        Partition {
            isolated: candidates,
            from,
            until: from + rng.range(200, 3_000),
        }
    }
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
    /// One-way cuts of single links, from the start until each heals.
    pub links: Vec<LinkCut>,
    /// Honest validators that crash and restart from what they persisted.
    pub restarts: Vec<Restart>,
    /// Replica limits (batch size, window, ...).
    pub max_batch_ops: usize,
    /// Log window.
    pub window: u64,
    /// Checkpoint interval.
    pub checkpoint_interval: u64,
    /// Replicas commit on the fast path ([`pbft_core::Config::fast_path`]): true in every
    /// drawn scenario; `pbft-sim --no-fast-path` clears it to compare.
    pub fast_path: bool,
    /// Twins' instances and the cuts per view, for [`Kind::Twins`].
    pub twins: Option<Twins>,
    /// Most virtual ms a checkpoint's snapshot takes (each one draws its time up to it),
    /// while the replica goes on ([`pbft_core::Replica::executed_deferring`]); 0: taken
    /// within the report of execution ([`pbft_core::Replica::executed`]). Drawn in half
    /// the runs.
    pub snapshot_delay_ms: u64,
    /// Clients send through one honest [`pbft_core::Gateway`], which batches their requests,
    /// sends them to the primary (to every validator when replies are late) and hands each
    /// client the f + 1 replies that prove its result: false in every drawn scenario;
    /// `pbft-sim --via-gateway` sets it.
    pub via_gateway: bool,
    /// Gateway-attested mode (with `via_gateway`): the validators list the gateways, clients
    /// send unsigned requests (their key proved by the transport), and the gateway signs
    /// one root per batch; `pbft-sim --attested` sets it.
    pub attested: bool,
    /// A Byzantine gateway beside the honest one: it forges requests (for clients that do not
    /// exist, and for real clients' keys at numbers they never use), equivocates (two
    /// different requests under one client and number, each to half the validators),
    /// replays and reorders what it sent, drops, and sends junk attestations. Listed among
    /// the attesting gateways in gateway-attested mode (its forgeries then execute,
    /// provably its own), a stranger end to end (nothing of it may execute);
    /// `pbft-sim --rogue-gateway` sets it.
    pub rogue_gateway: bool,
    /// Validators outside the genesis set, indices from `validators` on: they join when a
    /// reconfiguration adds them ([`Scenario::reconfiguration`]); 0 in other runs.
    pub spares: usize,
    /// The operator's reconfigurations, in order; empty in other runs.
    pub reconfigurations: Vec<crate::Reconfig>,
    /// Each link's bandwidth, in bytes per virtual ms (0: unlimited). A message waits for
    /// the ones sent before it on its link, then takes its size over this rate on top of its
    /// delay, so a new view with many certificates is slow where a vote is not.
    pub link_bytes_per_ms: u64,
}

/// Where the replicas of a Twins run stand in each view (Bano et al. 2020, section 4).
///
/// Instances are the validators in id order, then the second replica of each twinned
/// validator in the order of `twinned`. While the sender of a message is in view `v <
/// views.len()` and before `heal_ms`, the message crosses only between instances on the same
/// side of `views[v]`; afterwards nothing is cut, so liveness can be checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Twins {
    /// The validators (ids) that run as two replicas each.
    pub twinned: Vec<usize>,
    /// For each of the first views, the side (0 or 1) of every instance.
    pub views: Vec<Vec<u8>>,
    /// When every cut heals, virtual ms.
    pub heal_ms: u64,
}

impl Scenario {
    /// The scenario for `seed`: the kinds take turns, everything else is drawn from the seed.
    pub fn for_seed(seed: u64, validators: usize) -> Self {
        let kind = KINDS[(seed % KINDS.len() as u64) as usize];
        Self::new(kind, seed, validators)
    }

    /// The primary crashes with a full log above the stable checkpoint, on links of limited
    /// bandwidth: every vote crosses in a few ms, but the view changes and the new view carry
    /// a certificate for each of those seqs and take longer to cross than a view timeout.
    /// The first new view reaches the backups too late for its re-proposals to commit before
    /// the new primary's timer fires; the view timeout must back off (Castro and Liskov 2002,
    /// section 4.5.2) or every later view fails the same way, and a peer that waits for a
    /// view change or a new view must not be sent it again every retransmit interval while
    /// the first copy still crosses (the copies queue on the link ahead of the new view). The
    /// same stalled a QUIC cluster in the WAN test, whose links were slow because its
    /// forwarder reordered datagrams (fixed there). No other fault.
    pub fn slow_links(seed: u64, validators: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0x5107_11a6);
        let low = rng.range(5, 10);
        Scenario {
            kind: Kind::CrashedPrimary,
            validators,
            faults: BTreeMap::from([(0, Fault::CrashAt(rng.range(1_500, 2_500)))]),
            clients: 8,
            requests_per_client: 60,
            delay_ms: (low, low + 5),
            duplicate_percent: 0,
            loss_percent: 0,
            partitions: Vec::new(),
            links: Vec::new(),
            restarts: Vec::new(),
            max_batch_ops: 1,
            window: 64,
            checkpoint_interval: 32,
            fast_path: true,
            twins: None,
            snapshot_delay_ms: 0,
            via_gateway: false,
            attested: false,
            rogue_gateway: false,
            spares: 0,
            reconfigurations: Vec::new(),
            link_bytes_per_ms: 40,
        }
    }

    /// One backup alone commits on the fast path, and the view changes without it: the case
    /// the fast path's view-change rule exists for.
    ///
    /// The last validator, X, hears every vote; the other backups' messages reach X only,
    /// and X's reach no one, until 1.2 s. So X holds all n votes of each batch and commits
    /// it, while no other validator prepares (each has the pre-prepare and its own prepare).
    /// X crashes at 60 ms and is back at 3 s. The backups time out and change view; the
    /// view changes travel once the links heal, by then every backup is in the view change,
    /// so no prepare is retransmitted and the new view must take the batches from the votes
    /// the view changes report. One client request per batch, three clients, delays drawn
    /// from the seed: a new view that loses a batch orders another request at its seq.
    pub fn lone_fast_commit(seed: u64, validators: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0xfa57_c0de);
        let lone = validators - 1;
        let heal = 1_200;
        let mut links = Vec::new();
        for from in 1..validators {
            for to in (0..validators).filter(|&to| to != from) {
                if from == lone || to != lone {
                    links.push(LinkCut {
                        from,
                        to,
                        until: heal,
                    });
                }
            }
        }
        let low = rng.range(3, 8);
        Scenario {
            kind: Kind::CrashRestart,
            validators,
            faults: BTreeMap::new(),
            clients: 3,
            requests_per_client: 3,
            delay_ms: (low, low + rng.range(0, 10)),
            duplicate_percent: 0,
            loss_percent: 0,
            partitions: Vec::new(),
            links,
            restarts: vec![Restart {
                node: lone,
                at: 60,
                back: 3_000,
                surely: true,
                from_copy: None,
            }],
            max_batch_ops: 1,
            window: 8,
            checkpoint_interval: 4,
            fast_path: true,
            twins: None,
            snapshot_delay_ms: 0,
            via_gateway: false,
            attested: false,
            rogue_gateway: false,
            spares: 0,
            reconfigurations: Vec::new(),
            link_bytes_per_ms: 0,
        }
    }

    /// A validator that was down catches up by replay while the primary re-proposes seqs
    /// that committed: the case the watermark rule (Castro and Liskov, section 4.3) exists for.
    ///
    /// The primary, 0, runs `Fault::ReproposeCommitted`: it proposes other batches at seqs
    /// at or below its peers' stable checkpoints, and its messages never reach the last
    /// validator, X. X is down from the start until 2.5 s. Six requests, one per batch, fit a
    /// window of 8, so X catches up by replaying committed batches from the honest backups,
    /// not by a state transfer: a backup that let a stale proposal into its log in place of
    /// the committed batch it archived leaves X behind for good.
    pub fn stale_proposals(seed: u64, validators: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0x57a1_e000);
        let lagging = validators - 1;
        let low = rng.range(2, 8);
        Scenario {
            kind: Kind::RestartUnderReproposals,
            validators,
            faults: BTreeMap::from([(0, Fault::ReproposeCommitted)]),
            clients: 3,
            requests_per_client: 2,
            delay_ms: (low, low + rng.range(0, 10)),
            duplicate_percent: 0,
            loss_percent: 0,
            partitions: Vec::new(),
            links: vec![LinkCut {
                from: 0,
                to: lagging,
                until: u64::MAX,
            }],
            restarts: vec![Restart {
                node: lagging,
                at: 0,
                back: 2_500,
                surely: true,
                from_copy: None,
            }],
            max_batch_ops: 1,
            window: 8,
            checkpoint_interval: 2,
            fast_path: true,
            twins: None,
            snapshot_delay_ms: 0,
            via_gateway: false,
            attested: false,
            rogue_gateway: false,
            spares: 0,
            reconfigurations: Vec::new(),
            link_bytes_per_ms: 0,
        }
    }

    /// A random scenario of `kind`: f faulty validators in all, loss up to 20 %, delays,
    /// duplication and reordering, sometimes a partition that heals, and small batches,
    /// windows and checkpoint intervals so pipelining, buffering and garbage collection happen.
    pub fn new(kind: Kind, seed: u64, validators: usize) -> Self {
        match kind {
            Kind::Twins => return Self::twins(seed, validators),
            Kind::Generated => return Self::generated(seed, validators),
            _ => {}
        }
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
            Kind::CrashRestart | Kind::WholeCluster | Kind::Twins | Kind::Generated => None,
            Kind::RestartUnderReproposals | Kind::Rollback => Some(Fault::ReproposeCommitted),
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
        let crash = matches!(
            kind,
            Kind::CrashedPrimary | Kind::Cascading | Kind::Rollback
        );
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
            partitions.push(Partition::draw(&mut rng, (0..validators).collect(), f));
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
                    from_copy: None,
                });
                at = back + rng.range(100, 1_500);
            }
        }
        if kind == Kind::Rollback {
            // A copy early in the run, a crash once several checkpoints passed, and a restart
            // from the copy while the cluster still runs.
            let honest: Vec<usize> = (1..validators)
                .filter(|i| !faults.contains_key(i))
                .collect();
            let copy = rng.range(50, 300);
            let at = copy + rng.range(600, 1_500);
            restarts.push(Restart {
                node: *rng.pick(&honest),
                at,
                back: at + rng.range(50, 800),
                surely: true,
                from_copy: Some(copy),
            });
        }
        if matches!(kind, Kind::WholeCluster | Kind::RestartUnderReproposals) {
            let mut honest: Vec<usize> = (0..validators)
                .filter(|i| !faults.contains_key(i))
                .collect();
            if kind == Kind::RestartUnderReproposals {
                rng.keep(&mut honest, f + 1);
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
                        from_copy: None,
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
        // A rollback needs a run long enough for checkpoints to pass between copy and crash.
        let requests_per_client = match kind {
            Kind::Rollback => rng.range(12, 20) as usize,
            _ => rng.range(2, 6) as usize,
        };
        Scenario {
            kind,
            validators,
            faults,
            clients,
            requests_per_client,
            delay_ms: (low, low + rng.range(0, 30)),
            duplicate_percent: rng.range(0, 20),
            loss_percent: rng.range(0, 20),
            partitions,
            links: Vec::new(),
            restarts,
            max_batch_ops,
            window,
            checkpoint_interval: rng.range(1, window),
            fast_path: true,
            twins: None,
            snapshot_delay_ms: draw_snapshot_delay(&mut rng),
            via_gateway: false,
            attested: false,
            rogue_gateway: false,
            spares: 0,
            reconfigurations: Vec::new(),
            link_bytes_per_ms: 0,
        }
    }
}

/// [`Scenario::snapshot_delay_ms`] for a drawn scenario: half the runs take snapshots within
/// the execution report, half take up to 1 to 150 ms (a few message delays to dozens: past
/// the quorum's stable checkpoint, past later checkpoints).
pub(crate) fn draw_snapshot_delay(rng: &mut Rng) -> u64 {
    match rng.chance(50) {
        true => rng.range(1, 150),
        false => 0,
    }
}
