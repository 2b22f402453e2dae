//! The simulated network: loss, duplication, delay and partitions on every message, and the
//! routing of what a validator sends (through [`byzantine`](super::byzantine) if it is
//! faulty).

use pbft_core::{Destination, PublicKey};

use super::{Event, NodeId, Simulation};
use crate::Fault;

impl Simulation {
    /// Puts one message from `from` to node `to` on the network: lost if a cut separates them
    /// or by chance, else delivered once or twice, each copy after its own delay.
    pub(super) fn send(&mut self, to: NodeId, from: PublicKey, bytes: Vec<u8>) {
        let sender = self.node_of(&from);
        if sender.is_some_and(|sender| self.cut(sender, to))
            || self.rng.chance(self.scenario.loss_percent)
        {
            return;
        }
        let copies = if self.rng.chance(self.scenario.duplicate_percent) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (low, high) = self.scenario.delay_ms;
            let delay = self.rng.range(low, high);
            self.report.messages += 1;
            self.schedule(
                delay,
                Event::Message {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Whether a cut separates `a` from `b` now (clients are never cut off).
    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        let n = self.validators.len();
        self.scenario.partitions.iter().any(|p| {
            let active = p.from <= self.now && self.now < p.until;
            let inside = |node: NodeId| node < n && p.isolated.contains(&node);
            active && inside(a) != inside(b)
        })
    }

    /// The simulation node of a key: a validator or a client.
    fn node_of(&self, key: &PublicKey) -> Option<NodeId> {
        self.keys.iter().position(|k| k == key).or_else(|| {
            self.client_keys
                .iter()
                .position(|k| k == key)
                .map(|client| self.validators.len() + client)
        })
    }

    /// A message arrives at node `to`: a client, or a validator that is up (and, if faulty,
    /// lets its core see it), which then carries out what its replica outputs.
    pub(super) fn deliver(&mut self, to: NodeId, from: PublicKey, bytes: Vec<u8>) {
        if to >= self.validators.len() {
            self.client_receives(to - self.validators.len(), &bytes);
            return;
        }
        if self.is_down(to) || !self.intercept(to, &bytes) {
            return;
        }
        // Rejections are expected (garbage, replays, duplicates); they are counted, not fatal.
        let node = &mut self.validators[to];
        let _ = node.replica.handle_message(self.now, &from, &bytes);
        self.drain(to);
    }

    /// Puts a validator's message on the network, corrupted if the validator is faulty
    /// ([`Simulation::misbehave`]).
    pub(super) fn route(&mut self, index: NodeId, to: Destination, bytes: Vec<u8>) {
        let from = self.keys[index];
        let targets: Vec<NodeId> = match to {
            Destination::Validator(id) => vec![id.0 as usize],
            Destination::AllValidators => {
                (0..self.validators.len()).filter(|&i| i != index).collect()
            }
            Destination::Client(key) => match self.client_keys.iter().position(|k| *k == key) {
                Some(client) => vec![self.validators.len() + client],
                None => return,
            },
        };
        if self.is_down(index) {
            return;
        }
        match self.validators[index].fault {
            // A crash stops it, a censor drops what it receives and a diverging application
            // corrupts its own state: what it sends is honest.
            None | Some(Fault::CrashAt(_)) | Some(Fault::Censor) | Some(Fault::DivergeAt(_)) => {
                for target in targets {
                    self.send(target, from, bytes.clone());
                }
            }
            Some(fault) => self.misbehave(index, fault, targets, bytes),
        }
    }
}
