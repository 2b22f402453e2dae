//! Runs many simulator seeds and prints a summary per scenario kind; replays one seed with
//! `--seed`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use pbft_sim::{Report, Scenario, replay_command, run_checked};

/// Runs simulator seeds (each twice, checking every invariant) and prints a summary per
/// scenario kind; a failing seed prints the command that replays it.
#[derive(Parser)]
#[command(name = "pbft-sim")]
struct Args {
    /// Validators in each simulated cluster (n = 3f + 1 with f >= 1).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = at_least_four)]
    validators: usize,
    /// How many seeds to run.
    #[arg(long, value_name = "COUNT", default_value_t = 100)]
    seeds: u64,
    /// The first seed to run.
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    first: u64,
    /// Runs this one seed only (`--first SEED --seeds 1`).
    #[arg(long, value_name = "SEED", conflicts_with_all = ["first", "seeds"])]
    seed: Option<u64>,
}

impl Args {
    /// The seeds to run.
    fn range(&self) -> std::ops::Range<u64> {
        match self.seed {
            Some(seed) => seed..seed + 1,
            None => self.first..self.first + self.seeds,
        }
    }
}

/// A validator count the protocol can run: f >= 1.
fn at_least_four(value: &str) -> Result<usize, String> {
    let n: usize = value.parse().map_err(|err| format!("{err}"))?;
    if n < 4 {
        return Err("must be at least 4 (n = 3f + 1 with f >= 1)".to_string());
    }
    Ok(n)
}

/// What one scenario kind did over its seeds.
#[derive(Default)]
struct Tally {
    seeds: u64,
    failed: u64,
    requests: u64,
    views_changed: u64,
    restarts: u64,
    recoveries: Vec<u64>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = args.range();
    let count = seeds.end - seeds.start;
    let started = Instant::now();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let (mut completed, mut failed, mut evidence, mut virtual_ms) = (0u64, 0u64, 0u64, 0u64);
    let mut transfers = 0u64;
    for seed in seeds.clone() {
        let scenario = Scenario::for_seed(seed, args.validators);
        let report: Report = run_checked(seed, &scenario);
        let tally = tallies.entry(format!("{:?}", scenario.kind)).or_default();
        tally.seeds += 1;
        tally.requests += report.requests_completed;
        tally.views_changed += report.views_changed;
        tally.restarts += report.restarts;
        tally.recoveries.extend(report.recovery_ms);
        completed += report.requests_completed;
        evidence += report.evidence;
        transfers += report.state_transfers;
        virtual_ms += report.virtual_ms;
        if !report.violations.is_empty() {
            failed += 1;
            tally.failed += 1;
            eprintln!("\nseed {seed} FAILED ({scenario:?}):");
            for violation in &report.violations {
                eprintln!("  {violation}");
            }
            eprintln!("  replay: {}", replay_command(seed, args.validators));
        }
        let done = seed - seeds.start + 1;
        let progress =
            format!("{done}/{count} seeds, {completed} requests committed, {failed} failed");
        if std::io::stderr().is_terminal() {
            eprint!("\r{progress}");
            let _ = std::io::stderr().flush();
        } else if done % (count / 10).max(1) == 0 {
            eprintln!("{progress}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    println!(
        "{:<24} {:>6} {:>7} {:>9} {:>13} {:>9}   primary crash -> first commit in a new view",
        "scenario", "seeds", "failed", "requests", "views changed", "restarts"
    );
    for (kind, tally) in &mut tallies {
        tally.recoveries.sort_unstable();
        let recovery = match tally.recoveries.as_slice() {
            [] => "-".to_string(),
            all => format!(
                "p50 {} ms, p90 {} ms, max {} ms ({} {})",
                percentile(all, 0.5),
                percentile(all, 0.9),
                percentile(all, 1.0),
                all.len(),
                if all.len() == 1 { "crash" } else { "crashes" }
            ),
        };
        println!(
            "{kind:<24} {:>6} {:>7} {:>9} {:>13} {:>9}   {recovery}",
            tally.seeds, tally.failed, tally.requests, tally.views_changed, tally.restarts
        );
    }
    println!(
        "validators={} seeds={count} failed={failed} requests_committed={completed} evidence={evidence} state_transfers={transfers}",
        args.validators
    );
    println!(
        "{:.1} s of wall-clock time for two runs of each seed, {:.1} s of virtual time",
        secs,
        virtual_ms as f64 / 1000.0
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
