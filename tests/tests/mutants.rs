//! The mutation test: the simulator must catch every planted bug (`pbft_core::mutants`)
//! within a fixed budget of scenarios, or its passing runs prove nothing. For each bug and
//! each family of scenarios (scripted seeds, Twins, generated adversaries, and the targeted
//! corner cases: a batch only one replica committed on the fast path, stale proposals while
//! a replica catches up by replay) it walks the family's runs, every replica built with the
//! bug, until one reports a violation; it prints what caught each bug in each family and
//! after how many runs. Every bug must be caught by at least one family.

use pbft_core::mutants::Mutant;
use pbft_sim::{Report, SCENARIOS_N4, Scenario, Simulation};

/// Runs of each family tried per bug before the family counts as missing it.
const BUDGET: u64 = 200;

/// Twins scenario numbers are taken this far apart, so a short walk crosses every twinned
/// validator and many cuts of every view (coprime with the n = 4 space).
const TWINS_STRIDE: u64 = 1_031;

/// The scenario families the search takes turns between.
#[derive(Clone, Copy, Debug)]
enum Family {
    Scripted,
    Twins,
    Generated,
    /// [`Scenario::lone_fast_commit`] at n = 4 and 7 and [`Scenario::stale_proposals`] in turn.
    Targeted,
    /// Scripted seeds with clients behind a gateway, end to end, beside a Byzantine gateway
    /// the validators do not list: tried only for the bugs about gateways.
    RogueGateway,
}

impl Family {
    /// Whether this family is tried for `mutant`: gateway bugs in the rogue gateway's runs
    /// only, and the rest everywhere else (the other families send no attested request).
    fn tries(self, mutant: Mutant) -> bool {
        matches!(self, Family::RogueGateway) == (mutant == Mutant::AcceptUnlistedGateway)
    }
}

/// The first run of one family that caught a bug: its number, how many runs of the family
/// it took, and what it saw.
struct Caught {
    number: u64,
    runs: u64,
    violation: String,
}

fn run(mutant: Mutant, family: Family, i: u64) -> (u64, Report) {
    let (number, scenario) = match family {
        Family::Scripted => (i, Scenario::for_seed(i, 4)),
        Family::Twins => {
            let number = (i * TWINS_STRIDE) % SCENARIOS_N4;
            (number, Scenario::twins(number, 4))
        }
        Family::Generated => (i, Scenario::generated(i, 4)),
        Family::Targeted => (
            i,
            match i % 3 {
                0 => Scenario::lone_fast_commit(i, 4),
                1 => Scenario::lone_fast_commit(i, 7),
                _ => Scenario::stale_proposals(i, 4),
            },
        ),
        Family::RogueGateway => {
            let mut scenario = Scenario::for_seed(i, 4);
            scenario.via_gateway = true;
            scenario.rogue_gateway = true;
            (i, scenario)
        }
    };
    (
        number,
        Simulation::with_mutant(number, scenario, mutant).run(),
    )
}

/// The first run of `family` (within the budget) that catches `mutant`.
fn hunt(mutant: Mutant, family: Family) -> Option<Caught> {
    if !family.tries(mutant) {
        return None;
    }
    (0..BUDGET).find_map(|i| {
        let (number, report) = run(mutant, family, i);
        report.violations.first().map(|violation| Caught {
            number,
            runs: i + 1,
            violation: violation.clone(),
        })
    })
}

#[test]
fn the_simulator_catches_every_planted_bug() {
    const FAMILIES: [Family; 5] = [
        Family::Scripted,
        Family::Twins,
        Family::Generated,
        Family::Targeted,
        Family::RogueGateway,
    ];
    let results: Vec<(Mutant, Vec<Option<Caught>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = Mutant::ALL
            .iter()
            .map(|&mutant| {
                scope.spawn(move || {
                    let caught = FAMILIES.iter().map(|&family| hunt(mutant, family));
                    (mutant, caught.collect())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("mutant hunt"))
            .collect()
    });
    let mut missed = Vec::new();
    for (mutant, caught) in &results {
        println!("{mutant:?}:");
        for (family, caught) in FAMILIES.iter().zip(caught) {
            match caught {
                Some(caught) => println!(
                    "  {family:?}: caught by scenario {} after {} run{}: {}",
                    caught.number,
                    caught.runs,
                    if caught.runs == 1 { "" } else { "s" },
                    caught.violation
                ),
                None if !family.tries(*mutant) => println!("  {family:?}: not tried"),
                None => println!("  {family:?}: not caught in {BUDGET} runs"),
            }
        }
        if caught.iter().all(Option::is_none) {
            missed.push(*mutant);
        }
    }
    assert!(
        missed.is_empty(),
        "planted bugs the simulator missed: {missed:?}"
    );
}

#[test]
fn without_a_planted_bug_the_same_runs_pass() {
    // The hunt's first runs of every family, unmutated: what catches a bug is the bug.
    for i in 0..5 {
        for (number, scenario) in [
            (i, Scenario::for_seed(i, 4)),
            (
                (i * TWINS_STRIDE) % SCENARIOS_N4,
                Scenario::twins((i * TWINS_STRIDE) % SCENARIOS_N4, 4),
            ),
            (i, Scenario::generated(i, 4)),
            (i, Scenario::lone_fast_commit(i, 4)),
            (i, Scenario::stale_proposals(i, 4)),
        ] {
            let report = Simulation::new(number, scenario).run();
            assert!(report.violations.is_empty(), "{:?}", report.violations);
        }
    }
}
