//! Simulator runs over many seeds: every invariant after every step (no honest validator ever
//! signs two digests for one statement, across restarts too), every seed run twice, liveness
//! checked once the network heals and the crashed are back. Seeds cycle through every scenario
//! kind (Byzantine backups; crashed, equivocating, censoring and invalid-batch primaries;
//! forged view changes; cascading faulty primaries; crash and restart from persisted records),
//! each with loss up to 20 % and, in some, a partition that heals or a restart on top.

use pbft_sim::{
    ADDED, Fault, KINDS, Kind, Report, SCENARIOS_N4, Scenario, Simulation,
    reconfiguration_replay_command, replay_command, run_checked, twins_replay_command,
};

/// Runs `seeds` on both cores and fails with every violating seed and its replay command.
fn run_seeds(validators: usize, seeds: std::ops::Range<u64>) -> Vec<Report> {
    let run = |seed| run_checked(seed, &Scenario::for_seed(seed, validators));
    run_all(seeds.collect(), run, |seed| {
        replay_command(seed, validators)
    })
}

/// Runs `numbers` through `run` on both cores; fails with every violating run and the command
/// `replay` gives for it.
fn run_all(
    numbers: Vec<u64>,
    run: impl Fn(u64) -> Report + Sync,
    replay: impl Fn(u64) -> String,
) -> Vec<Report> {
    let run = &run;
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = numbers
            .chunks(numbers.len().div_ceil(2).max(1))
            .map(|chunk| scope.spawn(move || chunk.iter().map(|&n| run(n)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| {
            format!(
                "seed {}: {}\n  replay: {}",
                r.seed,
                r.violations.join("; "),
                replay(r.seed)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    reports
}

fn committed(reports: &[Report]) -> u64 {
    reports.iter().map(|r| r.requests_completed).sum()
}

/// What every run of a cluster size must have shown, beyond no violation: work committed,
/// equivocation caught, and view changes that actually happened.
fn exercised(reports: &[Report]) {
    assert!(
        committed(reports) as usize > reports.len(),
        "the runs did commit work"
    );
    assert!(
        reports.iter().map(|r| r.evidence).sum::<u64>() > 0,
        "equivocation was caught"
    );
    assert!(
        reports.iter().map(|r| r.views_changed).sum::<u64>() > reports.len() as u64,
        "views changed"
    );
    assert!(
        reports.iter().any(|r| r.recovery_ms.is_some()),
        "a primary crashed while it led and the cluster recovered"
    );
    assert!(
        reports.iter().map(|r| r.restarts).sum::<u64>() > reports.len() as u64 / 8,
        "validators crashed and restarted from their records"
    );
    assert!(
        reports.iter().map(|r| r.state_transfers).sum::<u64>() > 0,
        "replicas too far behind fetched a checkpoint's state"
    );
    assert!(
        reports.iter().map(|r| r.batches_fetched).sum::<u64>() > 0,
        "a new primary fetched a batch it had to re-propose before it signed its new view"
    );
}

#[test]
fn four_validators_stay_safe_and_live_over_500_seeds_of_every_scenario() {
    let reports = run_seeds(4, 0..500);
    exercised(&reports);
    traces_match_golden(&reports[..GOLDEN_SEEDS]);
}

/// Clients behind one honest gateway, over every scenario kind: it batches their requests,
/// routes them to the primary, sends late ones to every validator, and hands each client the
/// f + 1 replies it checks itself; every invariant holds as with clients talking directly.
#[test]
fn clients_behind_a_gateway_stay_safe_and_live_over_200_seeds_of_every_scenario() {
    let run = |seed| {
        let mut scenario = Scenario::for_seed(seed, 4);
        scenario.via_gateway = true;
        run_checked(seed, &scenario)
    };
    let reports = run_all((0..200).collect(), run, |seed| {
        format!("{} --via-gateway", replay_command(seed, 4))
    });
    exercised(&reports);
    let gateway = |pick: fn(&(u64, u64, u64)) -> u64| -> u64 {
        reports
            .iter()
            .filter_map(|r| r.gateway.as_ref())
            .map(pick)
            .sum()
    };
    assert!(
        gateway(|g| g.0) >= committed(&reports),
        "every accepted result came through the gateway"
    );
    assert!(
        gateway(|g| g.1) > 0,
        "late replies sent requests to every validator"
    );
}

/// A Byzantine gateway beside the honest one, over every scenario kind, in both modes. It
/// forges (for clients that do not exist, and for real clients at numbers they do not use),
/// equivocates, replays, reorders, drops and sends junk attestations. Gateway-attested, it is
/// listed: its forgeries execute, answerable by its signature, and the honest clients lose
/// nothing. End to end, it is a stranger: nothing it attested executes.
#[test]
fn a_byzantine_gateway_forges_only_what_its_own_signature_answers_for() {
    for attested in [true, false] {
        let run = |seed| {
            let mut scenario = Scenario::for_seed(seed, 4);
            scenario.via_gateway = true;
            scenario.attested = attested;
            scenario.rogue_gateway = true;
            run_checked(seed, &scenario)
        };
        let mode = if attested {
            "--attested"
        } else {
            "--via-gateway"
        };
        let reports = run_all((0..100).collect(), run, |seed| {
            format!("{} {mode} --rogue-gateway", replay_command(seed, 4))
        });
        exercised(&reports);
        let forgeries: u64 = reports.iter().map(|r| r.attested_forgeries).sum();
        match attested {
            true => assert!(forgeries > 0, "a listed gateway's forgeries execute"),
            false => assert_eq!(forgeries, 0, "a stranger's attestations never execute"),
        }
    }
}

/// A thousand clients behind one gateway, with a Byzantine backup lying to it, loss and
/// duplication: every request commits once and every client accepts its results from the
/// replies the gateway hands it; the gateway's batches carry many clients' requests.
#[test]
fn a_thousand_clients_behind_one_gateway_all_commit() {
    for seed in 0..2 {
        let mut scenario = Scenario::new(Kind::ByzantineBackups, seed, 4);
        scenario.restarts.clear();
        scenario.partitions.clear();
        scenario.clients = 1_000;
        scenario.requests_per_client = 2;
        scenario.max_batch_ops = 64;
        scenario.window = 8;
        scenario.loss_percent = 5;
        scenario.via_gateway = true;
        let report = run_checked(seed, &scenario);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        assert_eq!(report.requests_completed, 2_000, "seed {seed}");
        assert!(
            report.batches < 2_000 / 4,
            "seed {seed}: {} batches for 2,000 requests",
            report.batches
        );
    }
}

/// Seeds 0..GOLDEN_SEEDS at n = 4 whose trace digests (every output of every replica, every
/// byte sent) are kept in `tests/traces/n4.txt`.
const GOLDEN_SEEDS: usize = 200;

/// A refactor keeps the protocol's behaviour byte for byte: the traces of the golden seeds must
/// not change. A deliberate protocol change rewrites the file with `PBFT_BLESS_TRACES=1` and
/// says why in its commit.
fn traces_match_golden(reports: &[Report]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/traces/n4.txt");
    let actual: String = reports
        .iter()
        .map(|r| format!("{} {}\n", r.seed, r.trace))
        .collect();
    if std::env::var_os("PBFT_BLESS_TRACES").is_some() {
        std::fs::write(path, &actual).expect("write the golden traces");
        return;
    }
    let golden = std::fs::read_to_string(path).expect("read tests/traces/n4.txt");
    let changed: Vec<&str> = golden
        .lines()
        .zip(actual.lines())
        .filter(|(g, a)| g != a)
        .map(|(g, _)| g.split(' ').next().unwrap_or(g))
        .collect();
    assert!(
        changed.is_empty() && golden.lines().count() == actual.lines().count(),
        "the traces of seeds {changed:?} changed: behaviour is no longer byte-identical \
         (PBFT_BLESS_TRACES=1 rewrites tests/traces/n4.txt for a deliberate protocol change)"
    );
}

#[test]
fn seven_validators_stay_safe_and_live_over_100_seeds_of_every_scenario() {
    exercised(&run_seeds(7, 1000..1100));
}

#[test]
fn ten_validators_stay_safe_and_live_over_100_seeds_of_every_scenario() {
    exercised(&run_seeds(10, 2000..2100));
}

/// A validator whose application gets one operation wrong (a bad disk, a bit flip) finds out
/// at the next stable checkpoint, fetches the quorum's state instead of executing on, and ends
/// the run in step with the others; nobody else notices. Its executions are checked as an
/// honest validator's except between the corruption and the install.
#[test]
fn a_validator_whose_state_diverges_fetches_the_stable_state_and_catches_up() {
    for seed in 0..40 {
        let mut scenario = Scenario::new(Kind::ByzantineBackups, seed, 4);
        let node = 1 + (seed % 3) as usize;
        scenario.faults = [(node, Fault::DivergeAt(0))].into();
        // A restart would bring back whichever state its store held: one fault at a time.
        scenario.restarts.clear();
        scenario.clients = 2;
        scenario.requests_per_client = 6;
        scenario.checkpoint_interval = scenario.checkpoint_interval.min(2);
        let report = run_checked(seed, &scenario);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        assert_eq!(
            report.state_repairs, 1,
            "seed {seed}: the divergence was found once"
        );
        assert!(
            report.state_transfers >= 1,
            "seed {seed}: the stable state was fetched"
        );
    }
}

/// A calm network: every message takes exactly 10 ms, none is lost or repeated, nobody
/// crashes; validator `silent`, if any, sends nothing.
fn calm(validators: usize, fast_path: bool, silent: Option<usize>) -> Scenario {
    let mut scenario = Scenario::new(Kind::ByzantineBackups, 1, validators);
    scenario.faults = silent
        .map(|node| (node, Fault::Silent))
        .into_iter()
        .collect();
    scenario.delay_ms = (10, 10);
    scenario.loss_percent = 0;
    scenario.duplicate_percent = 0;
    scenario.partitions.clear();
    scenario.restarts.clear();
    scenario.fast_path = fast_path;
    scenario
}

/// The median commit latency of a run, in message delays from the pre-prepare.
fn median_delays(report: &Report) -> f64 {
    let mut delays = report.commit_delays.clone();
    delays.sort_unstable_by(f64::total_cmp);
    delays[delays.len() / 2]
}

/// Castro and Liskov's normal case takes three message delays from the pre-prepare to the
/// commit (pre-prepare, prepare, commit); with every validator's vote in, the fast path takes
/// two. With one validator silent the fast path cannot fire, and the commit round still
/// commits in three.
#[test]
fn the_fast_path_commits_one_message_delay_sooner_and_falls_back_to_three() {
    for validators in [4, 7] {
        let run = |fast_path, silent| {
            let report = run_checked(1, &calm(validators, fast_path, silent));
            assert!(report.violations.is_empty(), "{:?}", report.violations);
            assert!(report.requests_completed > 0 && report.deliveries > 0);
            println!(
                "n = {validators}, fast path {fast_path}, silent {silent:?}: median {} \
                 message delays, {} of {} deliveries on the fast path",
                median_delays(&report),
                report.fast_deliveries,
                report.deliveries
            );
            report
        };
        let fast = run(true, None);
        assert_eq!(median_delays(&fast), 2.0);
        assert_eq!(fast.fast_deliveries, fast.deliveries);
        let slow = run(false, None);
        assert_eq!(median_delays(&slow), 3.0);
        assert_eq!(slow.fast_deliveries, 0);
        let one_silent = run(true, Some(validators - 1));
        assert_eq!(median_delays(&one_silent), 3.0);
        assert_eq!(one_silent.fast_deliveries, 0);
    }
}

/// One backup commits batches on the fast path alone and crashes; the others never prepared
/// them and change view without it ([`Scenario::lone_fast_commit`]). The new view must
/// re-propose those batches from the votes its view changes report, or the backup's
/// deliveries and the others' disagree once it is back.
#[test]
fn batches_only_one_replica_committed_on_the_fast_path_survive_the_view_change() {
    for validators in [4, 7] {
        for seed in 0..20 {
            let scenario = Scenario::lone_fast_commit(seed, validators);
            let report = run_checked(seed, &scenario);
            assert!(
                report.violations.is_empty(),
                "n = {validators}, seed {seed}: {:?}",
                report.violations
            );
            assert!(
                report.fast_deliveries > 0 && report.views_changed > 0,
                "n = {validators}, seed {seed}: the lone fast commit and the view change happened"
            );
            assert_eq!(report.requests_completed, 9);
        }
    }
}

/// A new view that takes longer to reach the backups than a view timeout
/// ([`Scenario::slow_links`]): the cluster must still settle in a view and complete every
/// request, with the view timeout backing off instead of failing view after view.
#[test]
fn a_new_view_slower_than_the_view_timeout_still_settles() {
    for (validators, seeds) in [(4, 0..10), (7, 0..2)] {
        for seed in seeds {
            let report = run_checked(seed, &Scenario::slow_links(seed, validators));
            println!(
                "n = {validators}, seed {seed}: {} views changed, recovered in {:?} ms, {} virtual ms",
                report.views_changed, report.recovery_ms, report.virtual_ms
            );
            assert!(report.violations.is_empty(), "{:?}", report.violations);
            assert_eq!(report.requests_completed, 8 * 60);
        }
    }
}

/// A validator that was down catches up by replaying committed batches from its peers while
/// the primary proposes other batches at seqs they already checkpointed
/// ([`Scenario::stale_proposals`]): the peers must refuse the stale proposals and keep
/// serving what committed.
#[test]
fn a_validator_catches_up_by_replay_while_the_primary_reproposes_committed_seqs() {
    for seed in 0..20 {
        let scenario = Scenario::stale_proposals(seed, 4);
        let report = run_checked(seed, &scenario);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        assert_eq!(report.requests_completed, 6, "seed {seed}");
        // When the primary's stale proposals convicted it, the set changed while the
        // validator was down: past the boundary its peers keep the boundary's state, not
        // every batch before it, so it fetches that state once.
        let transfers = u64::from(report.epochs > 0);
        assert_eq!(
            (report.restarts, report.state_transfers),
            (1, transfers),
            "seed {seed}: the validator came back and caught up"
        );
    }
}

#[test]
fn seeds_cycle_through_every_scenario_kind() {
    let kinds: Vec<Kind> = (0..KINDS.len() as u64)
        .map(|seed| Scenario::for_seed(seed, 4).kind)
        .collect();
    assert_eq!(kinds, KINDS);
}

#[test]
fn different_seeds_explore_different_runs() {
    let kinds = KINDS.len() as u64;
    let a = run_checked(1, &Scenario::for_seed(1, 4));
    let b = run_checked(1 + kinds, &Scenario::for_seed(1 + kinds, 4));
    assert_eq!(
        Scenario::for_seed(1, 4).kind,
        Scenario::for_seed(1 + kinds, 4).kind,
        "same kind, different seed"
    );
    assert_ne!(a.trace, b.trace);
}

/// Twins scenarios taken this far apart through the n = 4 space (coprime with its size), so a
/// short budget crosses every twinned validator and many cuts of every view.
const TWINS_STRIDE: u64 = 263;

/// Runs `count` Twins scenarios at `validators` (spread over the n = 4 space) once each.
fn run_twins(validators: usize, count: u64) -> Vec<Report> {
    let numbers = (0..count)
        .map(|i| (i * TWINS_STRIDE) % SCENARIOS_N4)
        .collect();
    let run = |number| Simulation::new(number, Scenario::twins(number, validators)).run();
    run_all(numbers, run, |number| {
        twins_replay_command(number, validators)
    })
}

/// What Twins runs must have shown: work committed, the twins' equivocation seen and proven,
/// and views changed.
fn twins_exercised(reports: &[Report]) {
    assert!(
        committed(reports) as usize > reports.len(),
        "the runs did commit work"
    );
    assert!(
        reports.iter().map(|r| r.evidence).sum::<u64>() > reports.len() as u64 / 10,
        "the twins' equivocation was proven"
    );
    assert!(
        reports.iter().map(|r| r.views_changed).sum::<u64>() > reports.len() as u64,
        "views changed"
    );
}

#[test]
fn twins_at_four_validators_stay_safe_and_live_over_1000_scenarios() {
    twins_exercised(&run_twins(4, 1_000));
}

#[test]
fn twins_at_seven_validators_stay_safe_and_live_over_100_scenarios() {
    twins_exercised(&run_twins(7, 100));
}

/// Runs generated-adversary scenarios `numbers` at `validators`, each twice.
fn run_generated(validators: usize, numbers: std::ops::Range<u64>) -> Vec<Report> {
    let run = |number| run_checked(number, &Scenario::generated(number, validators));
    run_all(numbers.collect(), run, |number| {
        format!(
            "cargo run --release -p pbft-sim -- --validators {validators} --generated 1 --first {number}"
        )
    })
}

/// What generated-adversary runs must have shown, beyond no violation.
fn generated_exercised(validators: usize, reports: &[Report]) {
    assert!(
        committed(reports) as usize > reports.len(),
        "the runs did commit work"
    );
    assert!(
        reports.iter().map(|r| r.evidence).sum::<u64>() > 0,
        "the adversaries' equivocation was proven"
    );
    let whole_cluster = reports
        .iter()
        .filter(|r| {
            let scenario = Scenario::generated(r.seed, validators);
            let honest = validators - scenario.faults.len();
            let crashed: std::collections::BTreeSet<usize> = scenario
                .restarts
                .iter()
                .map(|restart| restart.node)
                .collect();
            crashed.len() == honest
        })
        .count();
    assert!(
        whole_cluster > 0,
        "every honest validator crashed in some runs"
    );
    assert!(
        reports.iter().map(|r| r.restarts).sum::<u64>() > reports.len() as u64,
        "validators crashed and restarted from their records"
    );
}

#[test]
fn generated_adversaries_at_four_validators_over_300_scenarios() {
    generated_exercised(4, &run_generated(4, 0..300));
}

#[test]
fn generated_adversaries_at_seven_validators_over_50_scenarios() {
    generated_exercised(7, &run_generated(7, 1000..1050));
}

/// Runs reconfiguration scenarios `numbers` at `validators` ([`Scenario::reconfiguration`]):
/// every one must take both changes (n -> n + 3 -> n, a key rotated on the way back) with the
/// new validators joining by state transfer, under the faults of its kind.
fn run_reconfigurations(validators: usize, numbers: Vec<u64>) -> Vec<Report> {
    let run = |number| run_checked(number, &Scenario::reconfiguration(number, validators));
    let reports = run_all(numbers, run, |number| {
        reconfiguration_replay_command(number, validators)
    });
    for report in &reports {
        assert_eq!(report.reconfigurations, 2, "scenario {}", report.seed);
        // The key rotated in at least (one added may leave again before its turn to join);
        // the run checks that every validator of the final set joined.
        assert!(
            (1..=ADDED as u64 + 1).contains(&report.joined),
            "scenario {}",
            report.seed
        );
    }
    assert!(committed(&reports) > 0);
    reports
}

#[test]
fn reconfigurations_at_four_validators_over_120_scenarios() {
    // 812: a validator restarted while it fetched a later epoch's checkpoint logged that
    // checkpoint as its own epoch's, and never caught up.
    let numbers = (0..120).chain([812]).collect();
    run_reconfigurations(4, numbers);
}

#[test]
fn reconfigurations_at_seven_validators_over_24_scenarios() {
    run_reconfigurations(7, (500..524).collect());
}
