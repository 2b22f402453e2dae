//! Simulator runs over many seeds: every invariant after every step, every seed run twice.

use pbft_sim::{Report, Scenario, replay_command, run_checked};

/// Runs `seeds` on both cores and fails with every violating seed and its replay command.
fn run_seeds(
    validators: usize,
    seeds: std::ops::Range<u64>,
    byzantine_primary: bool,
) -> Vec<Report> {
    let all: Vec<u64> = seeds.collect();
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .chunks(all.len().div_ceil(2).max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| {
                            let scenario = match byzantine_primary {
                                true => Scenario::equivocating_primary(seed, validators),
                                false => Scenario::random_byzantine_backups(seed, validators),
                            };
                            run_checked(seed, &scenario)
                        })
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
                replay_command(r.seed, validators, byzantine_primary)
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

#[test]
fn four_validators_with_a_byzantine_backup_stay_safe_and_live_over_500_seeds() {
    let reports = run_seeds(4, 0..500, false);
    assert!(committed(&reports) > 500, "the runs did commit work");
    assert!(
        reports.iter().map(|r| r.evidence).sum::<u64>() > 0,
        "equivocation was caught"
    );
}

#[test]
fn seven_validators_with_two_byzantine_backups_stay_safe_and_live_over_100_seeds() {
    let reports = run_seeds(7, 1000..1100, false);
    assert!(committed(&reports) > 100);
}

#[test]
fn ten_validators_with_three_byzantine_backups_stay_safe_and_live_over_100_seeds() {
    let reports = run_seeds(10, 2000..2100, false);
    assert!(committed(&reports) > 100);
}

#[test]
fn an_equivocating_primary_never_breaks_agreement() {
    let reports = run_seeds(4, 3000..3200, true);
    let reports_7 = run_seeds(7, 4000..4050, true);
    let evidence: u64 = reports.iter().chain(&reports_7).map(|r| r.evidence).sum();
    assert!(evidence > 0, "the primary's equivocation was reported");
}

#[test]
fn different_seeds_explore_different_runs() {
    let a = run_checked(1, &Scenario::random_byzantine_backups(1, 4));
    let b = run_checked(2, &Scenario::random_byzantine_backups(2, 4));
    assert_ne!(a.trace, b.trace);
}
