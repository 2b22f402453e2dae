//! Simulator runs over many seeds: every invariant after every step (no honest validator ever
//! signs two digests for one statement, across restarts too), every seed run twice, liveness
//! checked once the network heals and the crashed are back. Seeds cycle through every scenario
//! kind (Byzantine backups; crashed, equivocating, censoring and invalid-batch primaries;
//! forged view changes; cascading faulty primaries; crash and restart from persisted records),
//! each with loss up to 20 % and, in some, a partition that heals or a restart on top.

use pbft_sim::{KINDS, Kind, Report, Scenario, replay_command, run_checked};

/// Runs `seeds` on both cores and fails with every violating seed and its replay command.
fn run_seeds(validators: usize, seeds: std::ops::Range<u64>) -> Vec<Report> {
    let all: Vec<u64> = seeds.collect();
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .chunks(all.len().div_ceil(2).max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| run_checked(seed, &Scenario::for_seed(seed, validators)))
                        .collect::<Vec<_>>()
                })
            })
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
                replay_command(r.seed, validators)
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
}

#[test]
fn four_validators_stay_safe_and_live_over_500_seeds_of_every_scenario() {
    exercised(&run_seeds(4, 0..500));
}

#[test]
fn seven_validators_stay_safe_and_live_over_100_seeds_of_every_scenario() {
    exercised(&run_seeds(7, 1000..1100));
}

#[test]
fn ten_validators_stay_safe_and_live_over_100_seeds_of_every_scenario() {
    exercised(&run_seeds(10, 2000..2100));
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
