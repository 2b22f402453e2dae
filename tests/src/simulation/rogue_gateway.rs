//! A Byzantine gateway ([`Scenario::rogue_gateway`](crate::Scenario)) beside the honest one:
//! every so often, for the first [`ACTIVE_MS`] of the run, it forges, equivocates, replays,
//! reorders, drops and sends junk. Its draws come from a generator of its own, so the rest of
//! the run draws what it would without it.
//!
//! What may execute of it: in gateway-attested mode it is a listed gateway, so its
//! attestations count and its forgeries execute, each provably its own (the digests it
//! attested are allowed, [`Simulation::attested`]); end to end it is a stranger and nothing
//! it attested may execute. Either way, no honest client may lose a request to it: it forges
//! for real clients only at numbers below theirs.

use pbft_core::testing::client_key;
use pbft_core::{Hasher, Keypair, Message, PublicKey, Signature, attest};

use super::{Event, NodeId, Simulation};
use crate::{Rng, chain};

/// How long the rogue gateway acts, in virtual ms: long enough to overlap faults and view
/// changes, short enough that the run then settles.
const ACTIVE_MS: u64 = 10_000;

/// Clients the rogue gateway makes up: keys no simulated client has.
const PHANTOMS: usize = 6;

/// The first number honest clients use when a rogue gateway runs: it forges real clients'
/// requests below it, where they execute (or are stale) without taking a number a client
/// will use.
pub(super) const HONEST_FIRST_SEQ: u64 = 1 << 20;

/// The rogue gateway's state.
pub(super) struct RogueGateway {
    keypair: Keypair,
    rng: Rng,
    /// The next number it forges under, for phantoms and real clients alike.
    next_seq: u64,
    /// What it sent, to replay.
    sent: Vec<Vec<u8>>,
}

impl RogueGateway {
    pub(super) fn new(seed: u64) -> Self {
        RogueGateway {
            keypair: Self::keypair(),
            rng: Rng::new(seed ^ 0x726f_6775_6567_7779),
            next_seq: 1,
            sent: Vec::new(),
        }
    }

    /// Its key, which gateway-attested validators list.
    pub(super) fn keypair() -> Keypair {
        Keypair::from_seed(&Hasher::new(b"sim/rogue-gateway").finish().0)
    }
}

impl Simulation {
    /// The rogue gateway's node, if the scenario has one: after the honest gateway's.
    pub(super) fn rogue_node(&self) -> Option<NodeId> {
        self.rogue
            .as_ref()
            .map(|_| self.validators.len() + self.clients.len() + 1)
    }

    /// The rogue gateway's key.
    pub(super) fn rogue_key(&self) -> PublicKey {
        RogueGateway::keypair().public_key()
    }

    /// The rogue gateway acts once, and schedules its next act.
    pub(super) fn rogue_acts(&mut self) {
        let Some(node) = self.rogue_node() else {
            return;
        };
        let validators = self.validators.len();
        let Some(rogue) = self.rogue.as_mut() else {
            return;
        };
        let mut sends: Vec<(Vec<NodeId>, Vec<u8>)> = Vec::new();
        let mut allowed = Vec::new();
        let all: Vec<NodeId> = (0..validators).collect();
        match rogue.rng.range(0, 5) {
            // Forges a batch for clients that do not exist, to a random subset (dropping the
            // rest).
            0 => {
                let requests = (0..rogue.rng.range(1, 5))
                    .map(|i| {
                        let phantom = phantom((rogue.next_seq as usize + i as usize) % PHANTOMS);
                        let op = format!("forged {}", rogue.next_seq).into_bytes();
                        rogue.next_seq += 1;
                        (phantom, rogue.next_seq, op)
                    })
                    .collect();
                for request in attest(&chain(), &rogue.keypair, requests) {
                    allowed.push(request.digest(&chain()));
                    let mut to = all.clone();
                    let size = 1 + rogue.rng.range(0, validators as u64) as usize;
                    rogue.rng.keep(&mut to, size);
                    sends.push((to, Message::Request(request).encode()));
                }
            }
            // Forges a real client's request, at a number below any it uses.
            1 => {
                let client = rogue.rng.range(0, self.client_keys.len() as u64) as usize;
                let seq = rogue.next_seq.min(HONEST_FIRST_SEQ - 1);
                rogue.next_seq += 1;
                let op = format!("forged for client {client}").into_bytes();
                let key = client_key(client).public_key();
                for request in attest(&chain(), &rogue.keypair, vec![(key, seq, op)]) {
                    allowed.push(request.digest(&chain()));
                    sends.push((all.clone(), Message::Request(request).encode()));
                }
            }
            // Equivocates: two requests under one phantom and number, each to half.
            2 => {
                let key = phantom(rogue.rng.range(0, PHANTOMS as u64) as usize);
                let seq = rogue.next_seq;
                rogue.next_seq += 1;
                let split = validators / 2;
                for (half, op) in [(0..split, "left"), (split..validators, "right")] {
                    let request = (key, seq, op.as_bytes().to_vec());
                    for request in attest(&chain(), &rogue.keypair, vec![request]) {
                        allowed.push(request.digest(&chain()));
                        sends.push((half.clone().collect(), Message::Request(request).encode()));
                    }
                }
            }
            // Replays something it sent before, to everyone, in a new order.
            3 if !rogue.sent.is_empty() => {
                let bytes = rogue.rng.pick(&rogue.sent).clone();
                sends.push((all.clone(), bytes));
            }
            // Junk, none of which may execute: a signature not its own; its valid signature
            // and path on another operation; the honest gateway's name on its signature; a
            // path longer than any tree; a position outside the tree.
            _ => {
                let requests = (0..2)
                    .map(|i| (phantom(i), rogue.next_seq, b"junk".to_vec()))
                    .collect();
                rogue.next_seq += 1;
                let mut junk = attest(&chain(), &rogue.keypair, requests);
                let kind = rogue.rng.range(0, 5);
                if let Some(request) = junk.first_mut()
                    && let Some(attestation) = request.attestation.as_mut()
                {
                    match kind {
                        0 => request.signature = Signature([0x5a; 64]),
                        1 => request.op = b"junk, moved".to_vec(),
                        2 => attestation.gateway = super::SimGateway::keypair().public_key(),
                        3 => attestation.proof.path = vec![pbft_core::Digest([1; 32]); 33],
                        _ => attestation.proof.index = attestation.proof.count,
                    }
                    sends.push((all.clone(), Message::Request(request.clone()).encode()));
                }
            }
        }
        for (_, bytes) in &sends {
            rogue.sent.push(bytes.clone());
        }
        let next = self.now + rogue.rng.range(20, 80);
        if self.scenario.attested {
            self.attested.extend(allowed);
        }
        for (targets, bytes) in sends {
            for to in targets {
                self.send(to, node, bytes.clone());
            }
        }
        if next < ACTIVE_MS {
            self.schedule_at(next, Event::RogueGateway);
        }
    }
}

/// Phantom client `index`'s key: none of the simulated clients'.
fn phantom(index: usize) -> PublicKey {
    Keypair::from_seed(&Hasher::new(b"sim/phantom").u64(index as u64).finish().0).public_key()
}
