//! The simulated network: loss, duplication, delay and partitions on every message, and the
//! routing of what a validator sends (through [`byzantine`](super::byzantine) if it is
//! faulty).

use pbft_core::{Destination, Message, PublicKey};

use super::{Event, NodeId, Simulation};
use crate::Fault;

impl Simulation {
    /// Puts one message from node `from` to node `to` on the network: lost if a cut separates
    /// them or by chance, else delivered once or twice, each copy after its own delay.
    pub(super) fn send(&mut self, to: NodeId, from: NodeId, bytes: Vec<u8>) {
        if self.cut(from, to) || self.rng.chance(self.scenario.loss_percent) {
            return;
        }
        let copies = if self.rng.chance(self.scenario.duplicate_percent) {
            2
        } else {
            1
        };
        let key = self.key_of(from);
        let sent = self.serialised(from, to, bytes.len());
        for _ in 0..copies {
            let (low, high) = self.scenario.delay_ms;
            let delay = sent + self.rng.range(low, high);
            self.report.messages += 1;
            self.schedule(
                delay,
                Event::Message {
                    to,
                    from: key,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// How long from now until a message of `len` bytes has left `from` for `to`: 0 on a
    /// link of unlimited bandwidth, else the wait behind what the link still sends plus the
    /// message's own time on it.
    fn serialised(&mut self, from: NodeId, to: NodeId, len: usize) -> u64 {
        let rate = self.scenario.link_bytes_per_ms;
        if rate == 0 {
            return 0;
        }
        let free = self.link_free_at.entry((from, to)).or_insert(self.now);
        let done = (*free).max(self.now) + (len as u64).div_ceil(rate);
        *free = done;
        done - self.now
    }

    /// Whether a cut separates `a` from `b` now: a partition of the scenario's, or a Twins
    /// cut of the sender's view.
    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        let n = self.scenario.validators;
        let partitioned = self.scenario.partitions.iter().any(|p| {
            let active = p.from <= self.now && self.now < p.until;
            let inside = |node: NodeId| node < n && p.isolated.contains(&node);
            active && inside(a) != inside(b)
        });
        let link = self
            .scenario
            .links
            .iter()
            .any(|cut| (cut.from, cut.to) == (a, b) && self.now < cut.until);
        partitioned || link || self.twins_cut(a, b)
    }

    /// Whether the Twins plan cuts replica `a` from replica `b` now (clients are never cut):
    /// by the sides of the view `a` is in, until the plan heals.
    fn twins_cut(&self, a: NodeId, b: NodeId) -> bool {
        let Some(twins) = &self.scenario.twins else {
            return false;
        };
        let replicas = self.validators.len();
        if a >= replicas || b >= replicas || self.now >= twins.heal_ms {
            return false;
        }
        let view = self.validators[a].replica.view();
        usize::try_from(view)
            .ok()
            .and_then(|view| twins.views.get(view))
            .is_some_and(|sides| sides.get(a) != sides.get(b))
    }

    /// The key node `from` sends with: its validator's, its client's, or the gateway's.
    fn key_of(&self, from: NodeId) -> PublicKey {
        match self.validators.get(from) {
            Some(node) => self.keys[node.id],
            None => match self.client_keys.get(from - self.validators.len()) {
                Some(key) => *key,
                None if Some(from) == self.rogue_node() => self.rogue_key(),
                None => self.gateway_key(),
            },
        }
    }

    /// A message arrives at node `to`: a client, or a validator that is up (and, if faulty,
    /// lets its core see it), which then carries out what its replica outputs.
    pub(super) fn deliver(&mut self, to: NodeId, from: PublicKey, bytes: Vec<u8>) {
        if Some(to) == self.gateway_node() {
            self.gateway_receives(from, &bytes);
            return;
        }
        if to >= self.validators.len() {
            self.client_receives(to - self.validators.len(), &bytes);
            return;
        }
        if self.is_down(to) || !self.intercept(to, &bytes) {
            return;
        }
        // Rejections are expected (garbage, replays, duplicates); they are counted, not fatal.
        let node = &mut self.validators[to];
        let result = node.replica.handle_message(self.now, &from, &bytes);
        if std::env::var_os("PBFT_SIM_TRACE_ERRORS").is_some()
            && let Err(err) = &result
        {
            let what = match Message::decode(&bytes, usize::MAX) {
                Ok(Message::FetchState(f)) => format!(" (fetch {} {:?})", f.seq, f.chunk),
                Ok(Message::EpochChange(c)) => {
                    format!(" (epoch change {} at {})", c.state.epoch, c.boundary())
                }
                Ok(Message::Checkpoint(c)) => format!(" (checkpoint {})", c.seq),
                Ok(m) => format!(" ({})", m.kind()),
                _ => String::new(),
            };
            eprintln!("t={} replica {to}: {err}{what}", self.now);
        }
        self.drain(to);
    }

    /// Puts a validator's message on the network, corrupted if the validator is faulty
    /// ([`Simulation::misbehave`]).
    pub(super) fn route(&mut self, index: NodeId, to: Destination, bytes: Vec<u8>) {
        let from = index;
        let own = self.validators[index].id;
        let targets: Vec<NodeId> = match to {
            Destination::Validator(id) => {
                let set = self.validators[index].replica.validators().clone();
                self.instances_in(&set, id)
            }
            // Not to a spare that has not joined: it is in no one's set.
            Destination::AllValidators => (0..self.validators.len())
                .filter(|&i| self.validators[i].id != own && !self.validators[i].standby)
                .collect(),
            // Clients behind the gateway get their replies through it.
            Destination::Client(key) => match self.client_keys.iter().position(|k| *k == key) {
                Some(client) => vec![
                    self.gateway_node()
                        .unwrap_or(self.validators.len() + client),
                ],
                None => return,
            },
            Destination::Outside(key) => match self.keys.iter().position(|k| *k == key) {
                Some(removed) => self.instances_of(removed).collect(),
                None => return,
            },
        };
        if self.is_down(index) {
            return;
        }
        match self.validators[index].fault {
            // A crash stops it, a censor drops what it receives and a diverging application
            // corrupts its own state: what it sends is honest; so does a twin's.
            None | Some(Fault::CrashAt(_) | Fault::Censor | Fault::Twin | Fault::DivergeAt(_)) => {
                for target in targets {
                    self.send(target, from, bytes.clone());
                }
            }
            // A faulty validator lies to the gateway about its replies.
            Some(fault)
                if fault != Fault::Silent
                    && targets.len() == 1
                    && Some(targets[0]) == self.gateway_node()
                    && let Ok(Message::Reply(reply)) = Message::decode(&bytes, usize::MAX) =>
            {
                self.lie_to_gateway(index, targets[0], reply);
            }
            Some(fault) => self.misbehave(index, fault, targets, bytes),
        }
    }
}
