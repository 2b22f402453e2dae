//! Generated adversaries: what a validator with [`Fault::Generated`] does with each message its
//! honest core sends, one [`Action`] drawn per message from its [`Policy`]. Everything it
//! sends is signed with its own key, as a real Byzantine validator could; it keeps a bounded
//! history of what it sent and received to replay and re-propose from.

use pbft_core::{Batch, Hasher, Keypair, Message, Phase, PrePrepare, ReplicaId, ViewChange, Vote};

use super::byzantine::resign;
use super::{Event, NodeId, Simulation};
use crate::generated::Action;
use crate::{Policy, chain};

/// Messages a generated adversary remembers; past it a random one is replaced.
const HISTORY: usize = 256;

impl Simulation {
    /// Keeps `bytes` in validator `index`'s history (bounded by [`HISTORY`]).
    pub(super) fn remember(&mut self, index: NodeId, bytes: &[u8]) {
        if self.validators[index].seen.len() < HISTORY {
            self.validators[index].seen.push(bytes.to_vec());
        } else {
            let slot = self.rng.range(0, HISTORY as u64 - 1) as usize;
            self.validators[index].seen[slot] = bytes.to_vec();
        }
    }

    /// Sends what generated adversary `index`'s core sent to `targets`, as one action of
    /// `policy` says.
    pub(super) fn generated(
        &mut self,
        index: NodeId,
        policy: Policy,
        targets: Vec<NodeId>,
        bytes: Vec<u8>,
    ) {
        self.remember(index, &bytes);
        match policy.pick(&mut self.rng) {
            Action::Honest => self.send_all(&targets, index, &bytes),
            Action::Drop => {}
            Action::Delay => {
                let extra = self.rng.range(1, 2_000);
                for to in targets {
                    let bytes = bytes.clone();
                    self.schedule(
                        extra,
                        Event::Send {
                            to,
                            from: index,
                            bytes,
                        },
                    );
                }
            }
            Action::Duplicate => {
                self.send_all(&targets, index, &bytes);
                self.send_all(&targets, index, &bytes);
            }
            Action::Subset => {
                for to in targets {
                    if self.rng.chance(50) {
                        self.send(to, index, bytes.clone());
                    }
                }
            }
            Action::Resign => match self.resigned(index, &bytes) {
                Some(other) => {
                    for to in targets {
                        let which = if self.rng.chance(50) { &other } else { &bytes };
                        self.send(to, index, which.clone());
                    }
                }
                None => self.send_all(&targets, index, &bytes),
            },
            Action::Replay => {
                self.send_all(&targets, index, &bytes);
                let old = self.rng.pick(&self.validators[index].seen).clone();
                let to = self.rng.range(0, self.validators.len() as u64 - 1) as usize;
                self.send(to, index, old);
            }
            Action::Repropose => {
                self.send_all(&targets, index, &bytes);
                self.repropose_any(index);
            }
        }
    }

    fn send_all(&mut self, targets: &[NodeId], from: NodeId, bytes: &[u8]) {
        for &to in targets {
            self.send(to, from, bytes.to_vec());
        }
    }

    /// The message in `bytes` with one field changed and signed again with `index`'s key (an
    /// unsigned one just changed); `None` for messages it has nothing to change in.
    fn resigned(&mut self, index: NodeId, bytes: &[u8]) -> Option<Vec<u8>> {
        let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
        let window = self.scenario.window;
        let message = match Message::decode(bytes, usize::MAX).ok()? {
            Message::Vote(mut vote) => {
                match self.rng.range(0, 3) {
                    0 => vote.digest = Hasher::new(b"sim/other").digest(&vote.digest).finish(),
                    1 => vote.view = self.shift(vote.view, 2),
                    2 => vote.seq = self.shift(vote.seq, window),
                    _ => {
                        vote.phase = match vote.phase {
                            Phase::Prepare => Phase::Commit,
                            _ => Phase::Prepare,
                        }
                    }
                }
                resign(&mut vote, &keypair);
                Message::Vote(vote)
            }
            Message::PrePrepare(mut pre_prepare) => {
                match self.rng.range(0, 2) {
                    0 => {
                        let requests = &mut pre_prepare.batch.requests;
                        requests.reverse();
                        let keep = self.rng.range(0, requests.len() as u64) as usize;
                        requests.truncate(keep);
                        pre_prepare.vote.digest = pre_prepare.batch.digest(&chain());
                    }
                    1 => pre_prepare.vote.seq = self.shift(pre_prepare.vote.seq, window),
                    _ => pre_prepare.vote.view = self.shift(pre_prepare.vote.view, 2),
                }
                resign(&mut pre_prepare.vote, &keypair);
                Message::PrePrepare(pre_prepare)
            }
            Message::ViewChange(change) => {
                let mut prepared = change.prepared;
                let mut voted = change.voted;
                let mut checkpoint = change.checkpoint;
                let mut view = change.view;
                match self.rng.range(0, 4) {
                    0 if !prepared.is_empty() => {
                        let drop = self.rng.range(0, prepared.len() as u64 - 1) as usize;
                        prepared.remove(drop);
                    }
                    1 => checkpoint = pbft_core::StableCheckpoint::genesis(),
                    // Lie about a vote: deny it, or report another digest for it.
                    2 if !voted.is_empty() => {
                        let at = self.rng.range(0, voted.len() as u64 - 1) as usize;
                        match self.rng.chance(50) {
                            true => drop(voted.remove(at)),
                            false => {
                                let mut other = Hasher::new(b"sim/other");
                                voted[at].digest = other.digest(&voted[at].digest).finish();
                            }
                        }
                    }
                    _ => view = view.saturating_add(self.rng.range(1, 3)),
                }
                let id = ReplicaId(self.validators[index].id as u16);
                Message::ViewChange(ViewChange::new(
                    &chain(),
                    0,
                    (view, id),
                    checkpoint,
                    (prepared, voted),
                    &keypair,
                ))
            }
            Message::NewView(mut new_view) => {
                match self.rng.range(0, 1) {
                    0 if !new_view.proposals.is_empty() => {
                        let drop = self.rng.range(0, new_view.proposals.len() as u64 - 1);
                        new_view.proposals.remove(drop as usize);
                    }
                    _ => new_view.view = new_view.view.saturating_add(1),
                }
                new_view.signature = keypair.sign(&new_view.signed_digest(&chain(), 0));
                Message::NewView(new_view)
            }
            // Unsigned, proved by digest: a wrong batch for the seq asked about, or a request
            // for batches in another view.
            Message::Batch(mut answer) => {
                let requests = &mut answer.batch.requests;
                match requests.len() > 1 {
                    true => requests.reverse(),
                    false => requests.clear(),
                }
                Message::Batch(answer)
            }
            Message::FetchBatches(mut fetch) => {
                fetch.view = self.shift(fetch.view, 2);
                Message::FetchBatches(fetch)
            }
            _ => return None,
        };
        Some(message.encode())
    }

    /// `value` moved by up to `by` either way (never below 0).
    fn shift(&mut self, value: u64, by: u64) -> u64 {
        let step = self.rng.range(1, by.max(1));
        match self.rng.chance(50) {
            true => value.saturating_add(step),
            false => value.saturating_sub(step),
        }
    }

    /// A proposal in `index`'s current view, at a random seq from 1 up to a window past the
    /// highest committed (at or below the peers' watermarks included), of a batch from its
    /// history or a client request it received, sent to every other replica.
    fn repropose_any(&mut self, index: NodeId) {
        // Batches it saw proposed, and the client requests it saw, each alone: those may be
        // fresh, which every replica's exactly-once check lets through.
        let batches: Vec<Batch> = self.validators[index]
            .seen
            .iter()
            .filter_map(|bytes| match Message::decode(bytes, usize::MAX) {
                Ok(Message::PrePrepare(pre_prepare)) => Some(pre_prepare.batch),
                Ok(Message::Request(request)) => Some(Batch::of(vec![request])),
                _ => None,
            })
            .collect();
        if batches.is_empty() {
            return;
        }
        // The latest requests most often: the ones not ordered yet.
        let recent = batches.len().saturating_sub(8);
        let mut batch = match self.rng.chance(70) {
            true => self.rng.pick(&batches[recent..]).clone(),
            false => self.rng.pick(&batches).clone(),
        };
        if self.rng.chance(50) {
            batch.requests.reverse();
        }
        let highest = self.committed.keys().next_back().copied().unwrap_or(0);
        let seq = self.rng.range(1, highest + self.scenario.window);
        let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
        let vote = Vote::new(
            &chain(),
            0,
            Phase::PrePrepare,
            (self.validators[index].replica.view(), seq),
            batch.digest(&chain()),
            ReplicaId(self.validators[index].id as u16),
            &keypair,
        );
        let bytes = Message::PrePrepare(PrePrepare { vote, batch }).encode();
        let own = self.validators[index].id;
        let targets: Vec<NodeId> = (0..self.validators.len())
            .filter(|&node| self.validators[node].id != own)
            .collect();
        self.send_all(&targets, index, &bytes);
    }
}
