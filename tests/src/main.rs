//! Runs many simulator seeds and prints a summary; replays one seed with `--seed`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use pbft_sim::{Scenario, replay_command, run_checked};

const USAGE: &str = "usage: pbft-sim [--validators N] [--seeds COUNT] [--first SEED] [--seed SEED] [--byzantine-primary]";

struct Args {
    validators: usize,
    first: u64,
    seeds: u64,
    byzantine_primary: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        validators: 4,
        first: 0,
        seeds: 100,
        byzantine_primary: false,
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
            "--byzantine-primary" => args.byzantine_primary = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.validators < 4 {
        return Err("--validators must be at least 4 (n = 3f + 1 with f >= 1)".to_string());
    }
    Ok(args)
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
    let (mut completed, mut batches, mut evidence, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut virtual_ms = 0u64;
    for seed in args.first..args.first + args.seeds {
        let scenario = match args.byzantine_primary {
            true => Scenario::equivocating_primary(seed, args.validators),
            false => Scenario::random_byzantine_backups(seed, args.validators),
        };
        let report = run_checked(seed, &scenario);
        completed += report.requests_completed;
        batches += report.batches;
        evidence += report.evidence;
        virtual_ms += report.virtual_ms;
        if !report.violations.is_empty() {
            failed += 1;
            eprintln!("\nseed {seed} FAILED ({scenario:?}):");
            for violation in &report.violations {
                eprintln!("  {violation}");
            }
            eprintln!(
                "  replay: {}",
                replay_command(seed, args.validators, args.byzantine_primary)
            );
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
        "validators={} seeds={} failed={failed} requests_committed={completed} batches={batches} evidence={evidence}",
        args.validators, args.seeds
    );
    println!(
        "simulated: {:.0} committed ops/s of wall-clock time ({:.1} s for two runs of each seed), {:.1} s of virtual time",
        completed as f64 / secs,
        secs,
        virtual_ms as f64 / 1000.0
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
