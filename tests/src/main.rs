//! Runs many simulator seeds and prints a summary per scenario kind; replays one seed with
//! `--seed`. `--twins N` runs Twins scenarios instead, `--generated N` generated adversaries.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use pbft_sim::{
    ADDED, Report, Scenario, Simulation, reconfiguration_replay_command, replay_command,
    run_checked, twins_replay_command,
};

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
    /// Runs COUNT Twins scenarios from `--first` (each once): f validators run as two honest
    /// replicas sharing a key, the network cut per view. At n = 4 scenario numbers enumerate
    /// every twinned validator and every cut of the first 4 views (262,144 in all).
    #[arg(long, value_name = "COUNT", conflicts_with_all = ["seeds", "seed", "generated"])]
    twins: Option<u64>,
    /// Runs COUNT generated-adversary scenarios from `--first` (each twice): f validators
    /// mutate their honest core's outputs by a seeded policy while any subset of the others,
    /// all of them included, crashes and restarts.
    #[arg(long, value_name = "COUNT", conflicts_with_all = ["seeds", "seed"])]
    generated: Option<u64>,
    /// Runs COUNT reconfiguration scenarios from `--first` (each twice): an operator adds
    /// three validators by governance (4 -> 7 at n = 4), they join by state transfer, then
    /// it rotates a validator's key and removes the three (7 -> 4), under the faults of a
    /// scripted kind.
    #[arg(long, value_name = "COUNT", conflicts_with_all = ["seeds", "seed", "generated", "twins"])]
    reconfigure: Option<u64>,
    /// Threads running scenarios at once (default: one per core).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Builds every replica with this planted bug (`pbft_core::mutants`), to see which
    /// scenarios catch it. Needs `--features mutants`.
    #[arg(long, value_name = "BUG")]
    mutant: Option<String>,
    /// Runs the replicas without the fast path (`Config::fast_path` off), to compare commit
    /// latency with it.
    #[arg(long)]
    no_fast_path: bool,
    /// Sends every client's requests through one honest gateway (`pbft_core::Gateway`), which
    /// batches them, routes them to the primary, fails over to every validator and hands each
    /// client the f + 1 replies that prove its result.
    #[arg(long)]
    via_gateway: bool,
    /// Gateway-attested mode (implies --via-gateway): clients send unsigned requests, the
    /// gateway signs one root per batch, validators check one signature per batch.
    #[arg(long)]
    attested: bool,
    /// Adds a Byzantine gateway that forges, equivocates, replays, reorders, drops and sends
    /// junk attestations (listed by the validators with --attested, a stranger without).
    #[arg(long)]
    rogue_gateway: bool,
}

/// How the clients' requests reach the validators, and who else sends them.
#[derive(Clone, Copy)]
struct Route {
    via_gateway: bool,
    attested: bool,
    rogue_gateway: bool,
}

impl Route {
    /// The flags that replay this route.
    fn flags(self) -> String {
        let mut flags = String::new();
        if self.attested {
            flags.push_str(" --attested");
        } else if self.via_gateway {
            flags.push_str(" --via-gateway");
        }
        if self.rogue_gateway {
            flags.push_str(" --rogue-gateway");
        }
        flags
    }
}

/// A planted bug, when the binary is built with them.
#[cfg(feature = "mutants")]
type Planted = Option<pbft_core::mutants::Mutant>;
#[cfg(not(feature = "mutants"))]
type Planted = Option<std::convert::Infallible>;

/// Which scenarios a run draws.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Scripted,
    Twins,
    Generated,
    Reconfiguration,
}

impl Args {
    /// Threads to run scenarios on.
    fn jobs(&self) -> usize {
        self.jobs
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
            .max(1)
    }

    /// The planted bug `--mutant` names; exits with the list of bugs if it names none.
    fn planted(&self) -> Planted {
        let name = self.mutant.as_deref()?;
        #[cfg(feature = "mutants")]
        {
            let all = pbft_core::mutants::Mutant::ALL;
            match all.iter().find(|m| format!("{m:?}") == name) {
                Some(mutant) => Some(*mutant),
                None => {
                    eprintln!("error: --mutant {name}: not one of {all:?}");
                    std::process::exit(2);
                }
            }
        }
        #[cfg(not(feature = "mutants"))]
        {
            eprintln!("error: --mutant {name}: build with `--features mutants`");
            std::process::exit(2);
        }
    }

    /// What to run and which numbers.
    fn plan(&self) -> (Mode, std::ops::Range<u64>) {
        if let Some(count) = self.reconfigure {
            return (Mode::Reconfiguration, self.first..self.first + count);
        }
        match (self.twins, self.generated, self.seed) {
            (Some(count), _, _) => (Mode::Twins, self.first..self.first + count),
            (_, Some(count), _) => (Mode::Generated, self.first..self.first + count),
            (_, _, Some(seed)) => (Mode::Scripted, seed..seed + 1),
            _ => (Mode::Scripted, self.first..self.first + self.seeds),
        }
    }
}

impl Mode {
    /// Scenario `number` of this mode.
    fn scenario(self, number: u64, validators: usize) -> Scenario {
        match self {
            Mode::Scripted => Scenario::for_seed(number, validators),
            Mode::Generated => Scenario::generated(number, validators),
            Mode::Twins => Scenario::twins(number, validators),
            Mode::Reconfiguration => Scenario::reconfiguration(number, validators),
        }
    }

    /// Scenario `number` of this mode, and what it found.
    fn run(
        self,
        number: u64,
        (validators, fast_path, route): (usize, bool, Route),
        mutant: Planted,
    ) -> (Scenario, Report) {
        let mut scenario = self.scenario(number, validators);
        scenario.fast_path = fast_path;
        scenario.via_gateway = route.via_gateway;
        scenario.attested = route.attested;
        scenario.rogue_gateway = route.rogue_gateway;
        let report = match (self, mutant) {
            #[cfg(feature = "mutants")]
            (_, Some(mutant)) => Simulation::with_mutant(number, scenario.clone(), mutant).run(),
            // Twins runs are many: once each (the scripted and generated runs check
            // determinism).
            (Mode::Twins, _) => Simulation::new(number, scenario.clone()).run(),
            _ => run_checked(number, &scenario),
        };
        (scenario, report)
    }

    /// The command that replays scenario `number`.
    fn replay(self, number: u64, validators: usize) -> String {
        match self {
            Mode::Scripted => replay_command(number, validators),
            Mode::Twins => twins_replay_command(number, validators),
            Mode::Reconfiguration => reconfiguration_replay_command(number, validators),
            Mode::Generated => format!(
                "cargo run --release -p pbft-sim -- --validators {validators} --generated 1 --first {number}"
            ),
        }
    }

    /// What one unit of this mode is called in the summary.
    fn unit(self) -> &'static str {
        match self {
            Mode::Scripted => "seeds",
            Mode::Twins | Mode::Generated | Mode::Reconfiguration => "scenarios",
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
    /// Seeds in which some equivocator's evidence committed.
    convicting: u64,
    recoveries: Vec<u64>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (mode, seeds) = args.plan();
    let unit = mode.unit();
    let count = seeds.end - seeds.start;
    let started = Instant::now();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let (mut completed, mut failed, mut evidence, mut virtual_ms) = (0u64, 0u64, 0u64, 0u64);
    let mut transfers = 0u64;
    let mut batches_fetched = 0u64;
    let validators = args.validators;
    let no_fast_path = args.no_fast_path;
    let route = Route {
        via_gateway: args.via_gateway || args.attested,
        attested: args.attested,
        rogue_gateway: args.rogue_gateway,
    };
    let via_gateway = route.via_gateway;
    let mut gateway = (0u64, 0u64, 0u64);
    let mut forgeries = 0u64;
    let mutant = args.planted();
    let (mut deliveries, mut fast_deliveries) = (0u64, 0u64);
    let mut commit_delays: Vec<f64> = Vec::new();
    let mut conviction_ms: Vec<u64> = Vec::new();
    let mut undetected = 0u64;
    let (mut removed, mut changed_sets, mut highest_epoch) = (0u64, 0u64, 0u64);
    let (mut reconfigurations, mut joined) = (0u64, 0u64);
    let (mut rollbacks, mut rollbacks_detected) = (0u64, 0u64);
    let mut rolled_back_seqs: Vec<u64> = Vec::new();
    let next = AtomicU64::new(seeds.start);
    let (results, finished) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..args.jobs() {
            let (next, results, seeds) = (&next, results.clone(), seeds.clone());
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let run = mode.run(seed, (validators, !no_fast_path, route), mutant);
                    if results.send((seed, run)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(results);
        let mut done = 0;
        for (seed, (scenario, report)) in finished {
            let tally = tallies.entry(format!("{:?}", scenario.kind)).or_default();
            tally.seeds += 1;
            tally.requests += report.requests_completed;
            tally.views_changed += report.views_changed;
            tally.restarts += report.restarts;
            tally.convicting += u64::from(report.convictions > 0);
            tally.recoveries.extend(report.recovery_ms);
            completed += report.requests_completed;
            evidence += report.evidence;
            transfers += report.state_transfers;
            batches_fetched += report.batches_fetched;
            virtual_ms += report.virtual_ms;
            deliveries += report.deliveries;
            fast_deliveries += report.fast_deliveries;
            commit_delays.extend(&report.commit_delays);
            conviction_ms.extend(&report.conviction_ms);
            undetected += report.undetected;
            removed += report.removed;
            reconfigurations += report.reconfigurations;
            joined += report.joined;
            rollbacks += report.rollbacks;
            rollbacks_detected += report.rollbacks_detected;
            rolled_back_seqs.extend(&report.rolled_back_seqs);
            changed_sets += u64::from(report.epochs > 0);
            highest_epoch = highest_epoch.max(report.epochs);
            forgeries += report.attested_forgeries;
            if let Some((answered, retransmitted, refused)) = report.gateway {
                gateway.0 += answered;
                gateway.1 += retransmitted;
                gateway.2 += refused;
            }
            if !report.violations.is_empty() {
                failed += 1;
                tally.failed += 1;
                eprintln!(
                    "\n{} {seed} FAILED ({scenario:?}):",
                    unit.trim_end_matches('s')
                );
                for violation in &report.violations {
                    eprintln!("  {violation}");
                }
                let flag = if no_fast_path { " --no-fast-path" } else { "" };
                let route = route.flags();
                eprintln!(
                    "  replay: {}{flag}{route}",
                    mode.replay(seed, args.validators)
                );
            }
            done += 1;
            let progress =
                format!("{done}/{count} {unit}, {completed} requests committed, {failed} failed");
            if std::io::stderr().is_terminal() {
                eprint!("\r{progress}");
                let _ = std::io::stderr().flush();
            } else if done % (count / 10).max(1) == 0 {
                eprintln!("{progress}");
            }
        }
    });
    let secs = started.elapsed().as_secs_f64();
    if count == 1 {
        // Replaying one scenario: say what it was.
        println!("{:?}", mode.scenario(seeds.start, validators));
    }
    eprintln!();
    println!(
        "{:<24} {:>9} {:>7} {:>9} {:>13} {:>9} {:>9}   primary crash -> first commit in a new view",
        "scenario", unit, "failed", "requests", "views changed", "restarts", "convicted"
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
            "{kind:<24} {:>9} {:>7} {:>9} {:>13} {:>9} {:>9}   {recovery}",
            tally.seeds,
            tally.failed,
            tally.requests,
            tally.views_changed,
            tally.restarts,
            tally.convicting
        );
    }
    println!(
        "validators={} {unit}={count} failed={failed} requests_committed={completed} evidence={evidence} state_transfers={transfers} batches_fetched={batches_fetched}",
        args.validators
    );
    if mode == Mode::Reconfiguration {
        println!(
            "reconfigurations that took effect: {reconfigurations} of {} (n -> n + {ADDED} -> n with a key rotated); validators joined by state transfer: {joined}",
            2 * count
        );
    }
    conviction_ms.sort_unstable();
    if !conviction_ms.is_empty() {
        println!(
            "equivocators convicted: {}, never detected: {undetected}; first conflicting statement to committed evidence: p50 {} ms, p90 {} ms, max {} ms",
            conviction_ms.len(),
            percentile(&conviction_ms, 0.5),
            percentile(&conviction_ms, 0.9),
            percentile(&conviction_ms, 1.0),
        );
        println!(
            "removed from the set at the next epoch boundary: {removed} convicted validators; {changed_sets} runs changed the set (up to epoch {highest_epoch})"
        );
    }
    rolled_back_seqs.sort_unstable();
    if rollbacks > 0 {
        println!(
            "restored from an old copy: {rollbacks} validators ({rollbacks_detected} found statements they signed that the copy lacked); the copy's stable checkpoint was p50 {} seqs, max {} behind",
            percentile(&rolled_back_seqs, 0.5),
            percentile(&rolled_back_seqs, 1.0),
        );
    }
    commit_delays.sort_unstable_by(f64::total_cmp);
    let delays = |p: f64| {
        let index = ((commit_delays.len() as f64 - 1.0) * p).round() as usize;
        commit_delays.get(index).copied().unwrap_or(0.0)
    };
    println!(
        "commit latency, proposal to delivery at honest replicas: p50 {:.2}, p90 {:.2} message delays; {fast_deliveries} of {deliveries} deliveries on the fast path ({})",
        delays(0.5),
        delays(0.9),
        if no_fast_path { "off" } else { "on" }
    );
    if via_gateway {
        println!(
            "gateway: {} requests answered with f + 1 matching replies, {} sent again to every validator, {} replies not counted (most came after f + 1 agreed)",
            gateway.0, gateway.1, gateway.2
        );
    }
    if args.rogue_gateway {
        println!(
            "rogue gateway: {forgeries} requests no client sent executed on a listed gateway's attestation (each answerable by its signature){}",
            if args.attested {
                ""
            } else {
                "; end to end, none may"
            }
        );
    }
    let runs = match mode {
        Mode::Twins => "one run",
        Mode::Scripted | Mode::Generated | Mode::Reconfiguration => "two runs",
    };
    println!(
        "{secs:.1} s of wall-clock time for {runs} of each ({:.0} {unit}/s), {:.1} s of virtual time",
        count as f64 / secs.max(1e-9),
        virtual_ms as f64 / 1000.0
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
