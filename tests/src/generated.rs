//! Generated adversaries: a Byzantine validator that runs an honest core and mutates each of
//! its outputs by a policy drawn from the seed, so the attacks are searched for rather than
//! written by hand; and the scenarios that pit f of them against honest validators of which
//! any subset, the whole cluster included, crashes and restarts.

use std::collections::BTreeMap;

use crate::{Fault, Kind, Partition, Restart, Rng, Scenario};

/// What a generated adversary may do with one message its core sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sends it as the core meant.
    Honest,
    /// Sends nothing.
    Drop,
    /// Sends it up to 2 s late.
    Delay,
    /// Sends it twice.
    Duplicate,
    /// Sends it to a random subset of its targets.
    Subset,
    /// Changes a field (view, seq, digest, phase, batch, certificates) and signs it again with
    /// its own key, sending the original to some targets and the changed one to the others.
    Resign,
    /// Sends it, and a message from its history (sent or received) to a random validator.
    Replay,
    /// Sends it, and proposes a batch from its history at a random seq of its current view,
    /// at or below its peers' low watermarks included.
    Repropose,
}

/// Every action, in the order of [`Policy::weights`].
pub const ACTIONS: [Action; 8] = [
    Action::Honest,
    Action::Drop,
    Action::Delay,
    Action::Duplicate,
    Action::Subset,
    Action::Resign,
    Action::Replay,
    Action::Repropose,
];

/// A generated adversary's character: how likely each [`Action`] is (weight / sum of weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Weight of each action of [`ACTIONS`], 0..=9.
    pub weights: [u8; ACTIONS.len()],
}

impl Policy {
    /// A policy drawn from `rng`: each action weighted 0..=9, honest at least 1 so the
    /// adversary takes part often enough to matter.
    pub fn draw(rng: &mut Rng) -> Self {
        let mut weights = [0u8; ACTIONS.len()];
        for weight in &mut weights {
            *weight = rng.range(0, 9) as u8;
        }
        weights[0] = weights[0].max(1);
        Policy { weights }
    }

    /// The action for one message.
    pub fn pick(&self, rng: &mut Rng) -> Action {
        let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        let mut draw = rng.range(0, total.saturating_sub(1));
        for (action, &weight) in ACTIONS.iter().zip(&self.weights) {
            if draw < u64::from(weight) {
                return *action;
            }
            draw -= u64::from(weight);
        }
        Action::Honest
    }
}

impl Scenario {
    /// Generated-adversary scenario `seed`: f validators (the first primary among them in a
    /// third of the runs) each with its own [`Policy`]; loss, delays, duplication and in half
    /// the runs a partition that heals; and crashes of a random subset of the honest
    /// validators, all of them in a quarter of the runs, at random points of their steps
    /// (between a `Persist` and the `Send` after it included), once or twice.
    pub fn generated(seed: u64, validators: usize) -> Self {
        let mut rng = Rng::new(seed ^ 0x6ee7_a7ed);
        let f = (validators - 1) / 3;
        let mut ids: Vec<usize> = (0..validators).collect();
        let mut faults = BTreeMap::new();
        if rng.chance(33) {
            ids.retain(|&id| id != 0);
            faults.insert(0, Fault::Generated(Policy::draw(&mut rng)));
        }
        while faults.len() < f {
            let index = (rng.next_u64() % ids.len() as u64) as usize;
            let id = ids.swap_remove(index);
            faults.insert(id, Fault::Generated(Policy::draw(&mut rng)));
        }
        let honest: Vec<usize> = (0..validators)
            .filter(|id| !faults.contains_key(id))
            .collect();
        let mut partitions = Vec::new();
        if rng.chance(50) {
            partitions.push(Partition::draw(&mut rng, honest.clone(), f));
        }
        let mut restarts = Vec::new();
        let mut at = rng.range(50, 1_500);
        for _ in 0..rng.range(1, 2) {
            let mut crashed = honest.clone();
            let size = match rng.chance(25) {
                true => honest.len(),
                false => rng.range(1, honest.len() as u64) as usize,
            };
            rng.keep(&mut crashed, size);
            let mut last = at;
            for node in crashed {
                let back = at + rng.range(100, 2_000);
                last = last.max(back);
                restarts.push(Restart {
                    node,
                    at,
                    back,
                    surely: rng.chance(50),
                    from_copy: None,
                });
            }
            at = last + rng.range(500, 3_000);
        }
        let low = rng.range(1, 5);
        let window = rng.range(2, 8);
        Scenario {
            kind: Kind::Generated,
            validators,
            faults,
            clients: rng.range(1, 4) as usize,
            requests_per_client: rng.range(2, 6) as usize,
            delay_ms: (low, low + rng.range(0, 30)),
            duplicate_percent: rng.range(0, 20),
            loss_percent: rng.range(0, 15),
            partitions,
            links: Vec::new(),
            restarts,
            max_batch_ops: rng.range(1, 8) as usize,
            window,
            checkpoint_interval: rng.range(1, window),
            fast_path: true,
            twins: None,
            snapshot_delay_ms: crate::scenario::draw_snapshot_delay(&mut rng),
            via_gateway: false,
            attested: false,
            rogue_gateway: false,
            spares: 0,
            reconfigurations: Vec::new(),
            link_bytes_per_ms: 0,
        }
    }
}
