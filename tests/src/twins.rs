//! Twins scenarios (Bano, Sonnino, Chursin, Perelman, Li, Ching, Malkhi: "Twins: BFT Systems
//! Made Robust", OPODIS 2021): each Byzantine validator runs as two honest replicas that share
//! its key, and the network is cut differently in each view, so equivocation, double voting and
//! forgotten state come from real protocol code rather than from scripted attacks.
//!
//! At n = 4 the scenarios are enumerated: which validator is twinned (and so which view it
//! leads: the primary of view v is v mod n), and for each of the first [`VIEWS`] views which of
//! the 16 ways to cut the five instances in two (or not at all) holds. Scenario `k` is the
//! `k`-th of them in mixed radix, so every number names one schedule and replays it. At larger
//! n the space is too large to walk; scenario `k` draws its twinned validators and its cuts
//! from `k`.

use std::collections::BTreeMap;

use crate::{Fault, Kind, Rng, Scenario, Twins};

/// Views whose cut a Twins scenario chooses; from the next view on (and after `heal_ms`) the
/// network is whole.
pub const VIEWS: usize = 4;

/// The number of distinct Twins scenarios at n = 4: 4 twinned validators × 16 cuts of the five
/// instances (instance 0 on side 0, each other instance on either side) per view.
pub const SCENARIOS_N4: u64 = 4 * 16 * 16 * 16 * 16;

impl Scenario {
    /// Twins scenario `number` for `validators` validators: f of them twinned, the cut of each
    /// of the first [`VIEWS`] views, and the rest of the run (clients, delays, batch and window
    /// sizes, when the cuts heal) drawn from `number`.
    pub fn twins(number: u64, validators: usize) -> Self {
        let mut rng = Rng::new(number ^ 0x0007_0175);
        let f = (validators - 1) / 3;
        let instances = validators + f;
        let (twinned, views) = if validators == 4 {
            let index = number % SCENARIOS_N4;
            let twinned = vec![(index % 4) as usize];
            let mut rest = index / 4;
            let views = (0..VIEWS)
                .map(|_| {
                    let mask = rest % 16;
                    rest /= 16;
                    sides(mask, instances)
                })
                .collect();
            (twinned, views)
        } else {
            let mut ids: Vec<usize> = (0..validators).collect();
            let mut twinned = Vec::new();
            while twinned.len() < f {
                let index = (rng.next_u64() % ids.len() as u64) as usize;
                twinned.push(ids.swap_remove(index));
            }
            twinned.sort_unstable();
            let views = (0..VIEWS)
                .map(|_| {
                    // One view in eight whole; the others a random cut.
                    let mask = match rng.chance(12) {
                        true => 0,
                        false => rng.next_u64() % (1 << (instances - 1)),
                    };
                    sides(mask, instances)
                })
                .collect();
            (twinned, views)
        };
        let faults: BTreeMap<usize, Fault> = twinned.iter().map(|&id| (id, Fault::Twin)).collect();
        let low = rng.range(1, 5);
        let window = rng.range(2, 8);
        Scenario {
            kind: Kind::Twins,
            validators,
            faults,
            clients: rng.range(1, 3) as usize,
            requests_per_client: rng.range(2, 4) as usize,
            delay_ms: (low, low + rng.range(0, 20)),
            duplicate_percent: rng.range(0, 10),
            loss_percent: 0,
            partitions: Vec::new(),
            links: Vec::new(),
            restarts: Vec::new(),
            max_batch_ops: rng.range(1, 4) as usize,
            window,
            checkpoint_interval: rng.range(1, window),
            fast_path: true,
            twins: Some(Twins {
                twinned,
                views,
                heal_ms: rng.range(4_000, 12_000),
            }),
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

/// The sides of `instances` instances for cut `mask`: instance 0 on side 0, instance i + 1 on
/// the side of bit i (mask 0 cuts nothing).
fn sides(mask: u64, instances: usize) -> Vec<u8> {
    (0..instances)
        .map(|i| match i {
            0 => 0,
            i => ((mask >> (i - 1)) & 1) as u8,
        })
        .collect()
}

/// The command that replays Twins scenario `number`.
pub fn twins_replay_command(number: u64, validators: usize) -> String {
    format!(
        "cargo run --release -p pbft-sim -- --validators {validators} --twins 1 --first {number}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_n4_space_is_every_twinned_validator_and_every_cut_per_view() {
        let mut seen = std::collections::BTreeSet::new();
        for number in 0..SCENARIOS_N4 {
            let twins = Scenario::twins(number, 4).twins.expect("a twins plan");
            assert_eq!(twins.twinned.len(), 1);
            assert!(
                twins
                    .views
                    .iter()
                    .all(|sides| sides.len() == 5 && sides[0] == 0)
            );
            seen.insert((twins.twinned, twins.views));
        }
        assert_eq!(
            seen.len() as u64,
            SCENARIOS_N4,
            "no two numbers name one schedule"
        );
        assert_eq!(
            Scenario::twins(SCENARIOS_N4 + 7, 4)
                .twins
                .map(|t| (t.twinned, t.views)),
            Scenario::twins(7, 4).twins.map(|t| (t.twinned, t.views)),
            "numbers past the space wrap around it"
        );
    }

    #[test]
    fn larger_clusters_twin_f_validators() {
        let twins = Scenario::twins(3, 7).twins.expect("a twins plan");
        assert_eq!(twins.twinned.len(), 2);
        assert!(twins.views.iter().all(|sides| sides.len() == 9));
    }
}
