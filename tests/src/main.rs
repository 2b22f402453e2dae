//! Runs many simulator seeds and prints a summary per scenario kind; replays one seed with
//! `--seed`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use pbft_sim::{Report, Scenario, replay_command, run_checked};

const USAGE: &str = "usage: pbft-sim [--validators N] [--seeds COUNT] [--first SEED] [--seed SEED]";

struct Args {
    validators: usize,
    first: u64,
    seeds: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        validators: 4,
        first: 0,
        seeds: 100,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            words
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))
        };
        match word.as_str() {
            "--validators" => args.validators = value("--validators")? as usize,
            "--seeds" => args.seeds = value("--seeds")?,
            "--first" => args.first = value("--first")?,
            "--seed" => {
                args.first = value("--seed")?;
                args.seeds = 1;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.validators < 4 {
        return Err("--validators must be at least 4 (n = 3f + 1 with f >= 1)".to_string());
    }
    Ok(args)
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
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let (mut completed, mut failed, mut evidence, mut virtual_ms) = (0u64, 0u64, 0u64, 0u64);
    let mut transfers = 0u64;
    for seed in args.first..args.first + args.seeds {
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
        let done = seed - args.first + 1;
        let progress = format!(
            "{done}/{} seeds, {completed} requests committed, {failed} failed",
            args.seeds
        );
        if std::io::stderr().is_terminal() {
            eprint!("\r{progress}");
            let _ = std::io::stderr().flush();
        } else if done % (args.seeds / 10).max(1) == 0 {
            eprintln!("{progress}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    println!(
        "{:<22} {:>6} {:>7} {:>9} {:>13} {:>9}   primary crash -> first commit in a new view",
        "scenario", "seeds", "failed", "requests", "views changed", "restarts"
    );
    for (kind, tally) in &mut tallies {
        tally.recoveries.sort_unstable();
        let recovery = match tally.recoveries.as_slice() {
            [] => "-".to_string(),
            all => format!(
                "p50 {} ms, p90 {} ms, max {} ms ({} crashes)",
                percentile(all, 0.5),
                percentile(all, 0.9),
                percentile(all, 1.0),
                all.len()
            ),
        };
        println!(
            "{kind:<22} {:>6} {:>7} {:>9} {:>13} {:>9}   {recovery}",
            tally.seeds, tally.failed, tally.requests, tally.views_changed, tally.restarts
        );
    }
    println!(
        "validators={} seeds={} failed={failed} requests_committed={completed} evidence={evidence} state_transfers={transfers}",
        args.validators, args.seeds
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
