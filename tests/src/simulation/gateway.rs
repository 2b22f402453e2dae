//! The gateway clients may send through ([`Scenario::via_gateway`](crate::Scenario)): an honest
//! [`Gateway`] on the simulated network like any node, its messages lost, duplicated and
//! delayed like the others. Clients still check every result themselves, from the f + 1
//! replies it hands them, and the run checks that each of those verifies on its own: a
//! gateway that forwards a reply its client refuses has lost that client's answer. Faulty
//! validators lie to it ([`Simulation::lie_to_gateway`]).

use pbft_core::testing::{self, chain};
use pbft_core::{
    Gateway, GatewayConfig, GatewayOutput, Hasher, Keypair, Message, PublicKey, ReplicaId, Reply,
    Signature, ValidatorSet, verify_reply,
};

use super::{Event, NodeId, Simulation};

/// The simulated gateway.
pub(super) struct SimGateway {
    pub(super) gateway: Gateway,
    /// The key it connects to validators with (its transport identity, which attests in
    /// gateway-attested mode).
    key: PublicKey,
    /// When its timer is set for.
    timer: Option<u64>,
}

impl SimGateway {
    /// A gateway in front of `set`, with a session open for each of `clients`.
    /// `attesting`: gateway-attested mode, its key listed by the validators.
    pub(super) fn new(set: &ValidatorSet, clients: &[PublicKey], attesting: bool) -> Self {
        let mut config = GatewayConfig::new(chain());
        config.max_batch_ops = 8;
        let mut gateway = Gateway::new(config, set.clone()).expect("a valid gateway config");
        if attesting {
            gateway = gateway.attesting(Self::keypair());
        }
        for client in clients {
            gateway
                .open(0, *client)
                .expect("room for every simulated client");
        }
        let key = Self::keypair().public_key();
        SimGateway {
            gateway,
            key,
            timer: None,
        }
    }
}

impl SimGateway {
    /// Its key: its transport identity, and what it attests with in gateway-attested mode.
    pub(super) fn keypair() -> Keypair {
        Keypair::from_seed(&Hasher::new(b"sim/gateway").finish().0)
    }
}

impl Simulation {
    /// The gateway's node, if the clients send through one.
    pub(super) fn gateway_node(&self) -> Option<NodeId> {
        self.gateway
            .as_ref()
            .map(|_| self.validators.len() + self.clients.len())
    }

    /// The gateway's transport key (a key no validator or client has, if there is none).
    pub(super) fn gateway_key(&self) -> PublicKey {
        self.gateway
            .as_ref()
            .map_or(PublicKey([0; 32]), |gateway| gateway.key)
    }

    /// Bytes reach the gateway: a validator's reply, or a client's request.
    pub(super) fn gateway_receives(&mut self, from: PublicKey, bytes: &[u8]) {
        let now = self.now;
        let validator = self.keys.contains(&from);
        let Some(sim) = self.gateway.as_mut() else {
            return;
        };
        // Refusals are expected: late and duplicated replies, a client's retransmission of a
        // request the gateway still holds, faulty validators' lies. Counted, not fatal.
        if validator {
            // By its id in the set the gateway follows (a removed validator has none).
            if let Some(id) = sim.gateway.validators().id_of(&from) {
                let _ = sim.gateway.handle_reply(id, bytes);
            }
        } else if let Ok(Message::Request(request)) = Message::decode(bytes, usize::MAX) {
            // Gateway-attested, the client's key is what the transport proved (`from`): its
            // signature is not needed, and not sent on.
            let _ = match sim.gateway.is_attesting() {
                true => sim
                    .gateway
                    .submit_unsigned(now, &from, request.client_seq, request.op),
                false => sim.gateway.submit(now, &from, request),
            };
        }
        self.gateway_drain();
    }

    /// The gateway's timer set for `at` fires, unless it was reset since.
    pub(super) fn gateway_timer(&mut self, at: u64) {
        let now = self.now;
        let Some(sim) = self.gateway.as_mut() else {
            return;
        };
        if sim.timer != Some(at) {
            return;
        }
        sim.timer = None;
        sim.gateway.handle_timeout(now);
        self.gateway_drain();
    }

    /// Carries out what the gateway output: requests to validators, proven replies to
    /// clients (a refused request is retransmitted by its client's own timer); then sets its
    /// timer.
    fn gateway_drain(&mut self) {
        let Some(node) = self.gateway_node() else {
            return;
        };
        while let Some(output) = self
            .gateway
            .as_mut()
            .and_then(|sim| sim.gateway.poll_output())
        {
            match output {
                GatewayOutput::Transmit { to, bytes, .. } => {
                    let set = self
                        .gateway
                        .as_ref()
                        .map(|sim| sim.gateway.validators().clone())
                        .unwrap_or_else(|| self.set.clone());
                    let replicas: Vec<NodeId> = self.instances_in(&set, to);
                    for replica in replicas {
                        self.send(replica, node, bytes.clone());
                    }
                }
                GatewayOutput::Answered {
                    client,
                    replies,
                    chain: changes,
                    ..
                } => {
                    let Some(index) = self.client_keys.iter().position(|k| *k == client) else {
                        continue;
                    };
                    // The changes first, as a gateway host sends them (the simulated clients
                    // were handed them already, and ignore repeats).
                    for change in changes {
                        let bytes = Message::EpochChange(change).encode();
                        self.send(self.validators.len() + index, node, bytes);
                    }
                    let agree = replies.iter().all(|r| r.result == replies[0].result);
                    let set = self
                        .gateway
                        .as_ref()
                        .map(|sim| sim.gateway.validators().clone())
                        .unwrap_or_else(|| self.set.clone());
                    let verify = replies
                        .iter()
                        .all(|r| verify_reply(&chain(), &set, r).is_ok());
                    if !agree || !verify || replies.len() != set.reply_quorum() {
                        self.violation(format!(
                            "the gateway answered client {index} with replies that do not prove one result"
                        ));
                    }
                    for reply in replies {
                        let bytes = Message::Reply(reply).encode();
                        self.send(self.validators.len() + index, node, bytes);
                    }
                }
                GatewayOutput::Rejected {
                    client, refusals, ..
                } => {
                    let Some(index) = self.client_keys.iter().position(|k| *k == client) else {
                        continue;
                    };
                    for refusal in refusals {
                        let bytes = Message::Refusal(refusal).encode();
                        self.send(self.validators.len() + index, node, bytes);
                    }
                }
                GatewayOutput::Refused { .. } => {}
            }
        }
        let Some(sim) = self.gateway.as_mut() else {
            return;
        };
        let next = sim.gateway.poll_timeout();
        if next.is_some() && next != sim.timer {
            sim.timer = next;
            if let Some(at) = next {
                self.schedule_at(at.max(self.now), Event::GatewayTimer { at });
            }
        }
    }
}

impl Simulation {
    /// Faulty validator `index`'s lies about its `reply` to the gateway: the reply with its
    /// signature bytes zeroed, the reply under another validator's id, and a false result it
    /// signs itself in a view far ahead (which would steer the gateway's batches to a
    /// primary of its choosing if one validator's view counted). Then the reply itself.
    pub(super) fn lie_to_gateway(&mut self, index: NodeId, gateway: NodeId, reply: Reply) {
        let id = self.validators[index].id;
        let mut zeroed = reply.clone();
        zeroed.signature = Signature([0; 64]);
        let mut posing = reply.clone();
        posing.replica = ReplicaId(((id + 1) % self.scenario.validators) as u16);
        let answered = [(
            reply.client,
            reply.client_seq,
            reply.request,
            &b"forged result"[..],
        )];
        let false_result = testing::reply(id, (reply.view + 1_000, reply.seq), &answered, 0);
        for lie in [false_result, zeroed, posing, reply] {
            self.send(gateway, index, Message::Reply(lie).encode());
        }
    }
}
