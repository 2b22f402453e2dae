//! Reconfiguration scenarios: an operator changes the validator set by governance while the
//! cluster runs under faults. From n validators it adds three (4 → 7 at n = 4), each of them
//! joining by state transfer ([`pbft_core::Replica::join`]); once that epoch started, it
//! rotates an honest validator's key to a fourth new one and removes the three it added
//! (7 → 4). Faults, loss, partitions and restarts are those of a scripted kind drawn from
//! the number.

use crate::{Kind, Rng, Scenario};

/// A change of the set, by validator index: indices from `Scenario::validators` on are the
/// spare validators, which start outside the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds the validator.
    Add(usize),
    /// Removes it.
    Remove(usize),
    /// Gives `old`'s place to `new`.
    Rotate {
        /// Leaves.
        old: usize,
        /// Takes its id.
        new: usize,
    },
}

/// One reconfiguration the operator submits (approved by a quorum of the epoch it signs for)
/// once the one before took effect and `after_ms` more passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconfig {
    /// Virtual ms after the previous one took effect (after the start, for the first).
    pub after_ms: u64,
    /// The changes, in order.
    pub changes: Vec<Change>,
}

/// The scripted kinds a reconfiguration scenario draws its faults from.
const KINDS: [Kind; 6] = [
    Kind::ByzantineBackups,
    Kind::CrashedPrimary,
    Kind::EquivocatingPrimary,
    Kind::CrashRestart,
    Kind::WholeCluster,
    Kind::ForgedViewChanges,
];

/// Validators the first reconfiguration adds.
pub const ADDED: usize = 3;

impl Scenario {
    /// Reconfiguration scenario `number` at `validators` validators: n → n + 3 → n, with a
    /// key rotated on the way back, under the faults of a scripted kind.
    pub fn reconfiguration(number: u64, validators: usize) -> Self {
        let kind = KINDS[(number % KINDS.len() as u64) as usize];
        let mut scenario = Scenario::new(kind, number, validators);
        let mut rng = Rng::new(number ^ 0x2ec0_4f19);
        let added: Vec<usize> = (validators..validators + ADDED).collect();
        let rotated_in = validators + ADDED;
        // An honest validator that never crashes for good rotates its key.
        let honest: Vec<usize> = (0..validators)
            .filter(|i| !scenario.faults.contains_key(i))
            .collect();
        let old = *rng.pick(&honest);
        let mut back = vec![Change::Rotate {
            old,
            new: rotated_in,
        }];
        back.extend(added.iter().map(|&i| Change::Remove(i)));
        scenario.spares = ADDED + 1;
        scenario.reconfigurations = vec![
            Reconfig {
                after_ms: rng.range(10, 400),
                changes: added.iter().map(|&i| Change::Add(i)).collect(),
            },
            Reconfig {
                after_ms: rng.range(0, 600),
                changes: back,
            },
        ];
        // Load that outlasts both changes.
        scenario.requests_per_client += rng.range(6, 14) as usize;
        scenario
    }
}

/// The command that replays reconfiguration scenario `number`.
pub fn reconfiguration_replay_command(number: u64, validators: usize) -> String {
    format!(
        "cargo run --release -p pbft-sim -- --validators {validators} --reconfigure 1 --first {number}"
    )
}
