//! pbft-sim: a deterministic cluster simulator for pbft-core.
//!
//! One seed fixes everything: keys, faults, message delays, loss, duplication, reordering and
//! partitions. Whole clusters of real `Replica`s and `Client`s run in one thread in virtual
//! time, and after every step the simulator checks agreement, validity, exactly-once execution
//! and QC validity; at the end, once the network has healed, it checks that every request
//! committed and every honest replica delivered every batch.
//!
//! - [`Rng`]: the seeded random numbers every draw comes from.
//! - [`Scenario`]: what a seed puts the cluster through ([`Kind`], [`Fault`], partitions and
//!   restarts): scripted faults ([`Scenario::for_seed`]), Twins ([`Scenario::twins`]) and
//!   generated adversaries ([`Scenario::generated`]).
//! - [`Simulation`]: the event loop, the network and the simulated hosts; its private modules
//!   hold the Byzantine behaviours and the invariant checks.
//! - [`Report`]: what a run found, with the digest of its trace.
//! - [`cluster`]: a fault-free in-memory cluster for benchmarks and scenario tests.

pub mod cluster;
mod generated;
mod reconfiguration;
mod report;
mod rng;
mod scenario;
mod simulation;
mod twins;

pub use generated::{ACTIONS, Action, Policy};
/// The chain id and validator keys of every simulation: the shared test fixtures'.
pub use pbft_core::testing::{chain, validator_keys};
pub use reconfiguration::{ADDED, Change, Reconfig, reconfiguration_replay_command};
pub use report::Report;
pub use rng::Rng;
pub use scenario::{
    BACKUP_FAULTS, Fault, KINDS, Kind, LinkCut, Partition, Restart, Scenario, Twins,
};
pub use simulation::Simulation;
pub use twins::{SCENARIOS_N4, VIEWS, twins_replay_command};

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
