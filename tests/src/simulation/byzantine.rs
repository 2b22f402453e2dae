//! Byzantine validators: each runs an honest core and corrupts what it sends (and, for some,
//! filters or records what it receives), as its [`Fault`] says. Every corruption draws from the
//! run's random numbers in the order it sends, interleaved with the network's draws for the
//! same messages.

use pbft_core::{Batch, Hasher, Keypair, Message, NewView, Request, ViewChange, Vote};

use super::{NodeId, Simulation};

/// How far apart a drip-feeder sends its state chunks, virtual ms.
const DRIP_MS: u64 = 90;
use crate::{Fault, chain};

impl Simulation {
    /// What a faulty validator does with a message before its core sees it: a censor drops
    /// client 0's requests; a replayer or forger keeps what it receives to replay it later.
    /// Whether the core gets the message.
    pub(super) fn intercept(&mut self, to: NodeId, bytes: &[u8]) -> bool {
        let censored = self.client_keys[0];
        let node = &mut self.validators[to];
        if node.fault == Some(Fault::Censor)
            && let Ok(Message::Request(request)) = Message::decode(bytes, usize::MAX)
            && request.client == censored
        {
            return false;
        }
        let keeps = matches!(node.fault, Some(Fault::Replay | Fault::ForgeViewChange));
        if keeps && node.seen.len() < 256 {
            node.seen.push(bytes.to_vec());
        }
        if node.fault == Some(Fault::SpamState)
            && let Ok(Message::FetchState(fetch)) = Message::decode(bytes, usize::MAX)
        {
            node.fetched = fetch.seq;
        }
        if matches!(node.fault, Some(Fault::Generated(_))) {
            self.remember(to, bytes);
        }
        true
    }

    /// Sends what faulty validator `index`'s core sent to `targets`, corrupted as `fault` says.
    pub(super) fn misbehave(
        &mut self,
        index: NodeId,
        fault: Fault,
        targets: Vec<NodeId>,
        bytes: Vec<u8>,
    ) {
        let from = index;
        match fault {
            // Silent sends nothing; the others send honestly and never come here.
            Fault::Silent
            | Fault::CrashAt(_)
            | Fault::Censor
            | Fault::Twin
            | Fault::DivergeAt(_) => {}
            Fault::Generated(policy) => self.generated(index, policy, targets, bytes),
            Fault::SpamState => {
                let stable = self.validators[index].replica.stable_checkpoint().clone();
                let junk = Message::StateChunk(pbft_core::StateChunk {
                    seq: self.validators[index].fetched,
                    index: u32::MAX,
                    bytes: vec![0; 8],
                    proof: pbft_core::InclusionProof {
                        index: 0,
                        count: 1,
                        path: Vec::new(),
                    },
                })
                .encode();
                let certificate = Message::Checkpoint(stable).encode();
                for to in targets {
                    self.send(to, from, bytes.clone());
                    self.send(to, from, junk.clone());
                    self.send(to, from, certificate.clone());
                }
            }
            Fault::DripFeed => {
                let chunk = matches!(
                    Message::decode(&bytes, usize::MAX),
                    Ok(Message::StateChunk(_))
                );
                for to in targets {
                    if chunk {
                        self.report.drip_chunks += 1;
                        let node = &mut self.validators[index];
                        node.drip_next = node.drip_next.max(self.now) + DRIP_MS;
                        let at = node.drip_next;
                        let bytes = bytes.clone();
                        self.schedule_at(at, super::Event::Send { to, from, bytes });
                    } else {
                        self.send(to, from, bytes.clone());
                    }
                }
            }
            Fault::InvalidBatch => {
                let bytes = match Message::decode(&bytes, usize::MAX) {
                    Ok(Message::PrePrepare(mut pre_prepare)) => {
                        // The request digest does not cover the signature: the batch digest
                        // and the primary's vote stay valid, only the client signature breaks.
                        if let Some(request) = pre_prepare.batch.requests.first_mut() {
                            request.signature.0[0] ^= 1;
                        }
                        Message::PrePrepare(pre_prepare).encode()
                    }
                    _ => bytes,
                };
                for target in targets {
                    self.send(target, from, bytes.clone());
                }
            }
            Fault::ForgeViewChange => self.forge_view_change(index, &targets, bytes),
            Fault::ReproposeCommitted => {
                for &target in &targets {
                    self.send(target, from, bytes.clone());
                }
                self.repropose_committed(index);
            }
            Fault::BadState => {
                let bytes = match Message::decode(&bytes, usize::MAX) {
                    Ok(Message::StateChunk(mut chunk)) => {
                        match chunk.bytes.first_mut() {
                            Some(first) => *first ^= 1,
                            None => chunk.bytes.push(0),
                        }
                        Message::StateChunk(chunk).encode()
                    }
                    Ok(Message::StateManifest(mut manifest)) => {
                        manifest.app_len += 1;
                        Message::StateManifest(manifest).encode()
                    }
                    _ => bytes,
                };
                for target in targets {
                    self.send(target, from, bytes.clone());
                }
            }
            Fault::Garbage => {
                for target in targets {
                    let len = self.rng.range(0, 300) as usize;
                    let mut junk: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                    if let Some(first) = junk.first_mut()
                        && self.rng.chance(50)
                    {
                        *first = pbft_core::PROTOCOL_VERSION;
                    }
                    self.send(target, from, junk);
                }
            }
            Fault::Replay => {
                for target in targets {
                    self.send(target, from, bytes.clone());
                    let seen = &self.validators[index].seen;
                    if !seen.is_empty() {
                        let old = self.rng.pick(seen).clone();
                        let peer = self.rng.range(0, self.validators.len() as u64 - 1) as usize;
                        self.send(peer, from, old);
                    }
                }
            }
            Fault::WrongKey => {
                let forger = Keypair::from_seed(&[0xee; 32]);
                let forged = rewrite_vote(&bytes, |vote| resign(vote, &forger));
                for target in targets {
                    self.send(
                        target,
                        from,
                        forged.clone().unwrap_or_else(|| bytes.clone()),
                    );
                }
            }
            Fault::EquivocateVotes => {
                let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
                let other = rewrite_vote(&bytes, |vote| {
                    vote.digest = Hasher::new(b"sim/fake").digest(&vote.digest).finish();
                    resign(vote, &keypair);
                });
                self.split_send(&targets, from, &bytes, other.as_deref());
            }
            Fault::EquivocatingPrimary => {
                let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
                let other = match Message::decode(&bytes, usize::MAX) {
                    Ok(Message::PrePrepare(mut pre_prepare))
                        if pre_prepare.batch.requests.len() > 1 =>
                    {
                        pre_prepare.batch.requests.reverse();
                        pre_prepare.vote.digest = pre_prepare.batch.digest(&chain());
                        resign(&mut pre_prepare.vote, &keypair);
                        Some(Message::PrePrepare(pre_prepare).encode())
                    }
                    // A batch of one has no valid alternative from the same requests.
                    _ => None,
                };
                self.split_send(&targets, from, &bytes, other.as_deref());
            }
        }
    }

    /// While it leads its view: a proposal at a committed seq (possibly at or below the
    /// receivers' stable checkpoints, or one its new view re-proposed) of another batch made of
    /// real client requests, validly signed by it, to every peer.
    fn repropose_committed(&mut self, index: NodeId) {
        let view = self.validators[index].replica.view();
        if self.set.primary(view).0 as usize != index || !self.rng.chance(30) {
            return;
        }
        let Some(&highest) = self.committed.keys().next_back() else {
            return;
        };
        let seq = self.rng.range(1, highest);
        let other = self.rng.range(1, highest);
        let (Some(at), Some(mixed)) = (self.committed.get(&seq), self.committed.get(&other)) else {
            return;
        };
        let mut requests: Vec<Request> = at.batch.requests.clone();
        for request in &mixed.batch.requests {
            if !requests.contains(request) {
                requests.push(request.clone());
            }
        }
        requests.reverse();
        requests.truncate(self.scenario.max_batch_ops);
        let batch = Batch::of(requests);
        let digest = batch.digest(&chain());
        if batch.requests.is_empty() || digest == at.digest {
            return;
        }
        let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
        let vote = Vote::new(
            &chain(),
            0,
            pbft_core::Phase::PrePrepare,
            (view, seq),
            digest,
            pbft_core::ReplicaId(index as u16),
            &keypair,
        );
        let bytes = Message::PrePrepare(pbft_core::PrePrepare { vote, batch }).encode();
        let from = index;
        for target in (0..self.validators.len()).filter(|&i| i != index) {
            self.send(target, from, bytes.clone());
        }
    }

    /// The forger: view changes stripped of their certificates with a raised view, new views
    /// missing a re-proposal, a new view of its own for the next view on every status, and
    /// old view changes and new views replayed. All signed with its own key, as a real
    /// Byzantine validator could.
    fn forge_view_change(&mut self, index: NodeId, targets: &[NodeId], bytes: Vec<u8>) {
        let from = index;
        let keypair = Keypair::from_seed(&self.validators[index].keypair.seed());
        let id = pbft_core::ReplicaId(index as u16);
        let forged = match Message::decode(&bytes, usize::MAX) {
            Ok(Message::ViewChange(change)) => {
                let view = change.view + self.rng.range(0, 2);
                let stripped = ViewChange::new(
                    &chain(),
                    0,
                    (view, id),
                    change.checkpoint,
                    (Vec::new(), Vec::new()),
                    &keypair,
                );
                Some(Message::ViewChange(stripped).encode())
            }
            Ok(Message::NewView(mut new_view)) if !new_view.proposals.is_empty() => {
                new_view.proposals.pop();
                new_view.signature = keypair.sign(&new_view.signed_digest(&chain(), 0));
                Some(Message::NewView(new_view).encode())
            }
            Ok(Message::Status(status)) => {
                let view = status.view + 1;
                let change = ViewChange::new(
                    &chain(),
                    0,
                    (view, id),
                    pbft_core::StableCheckpoint::genesis(),
                    (Vec::new(), Vec::new()),
                    &keypair,
                );
                let mut new_view = NewView::assemble(&self.set, view, &[change], Vec::new());
                new_view.signature = keypair.sign(&new_view.signed_digest(&chain(), 0));
                for &target in targets {
                    self.send(target, from, Message::NewView(new_view.clone()).encode());
                }
                None
            }
            _ => None,
        };
        for &target in targets {
            self.send(
                target,
                from,
                forged.clone().unwrap_or_else(|| bytes.clone()),
            );
            let seen = &self.validators[index].seen;
            if !seen.is_empty() && self.rng.chance(10) {
                let old = self.rng.pick(seen).clone();
                self.send(target, from, old);
            }
        }
    }

    /// Equivocation on the wire: odd targets get `other`, even ones `bytes`, and the first
    /// target in a set gets both, so someone holds the evidence.
    fn split_send(&mut self, targets: &[NodeId], from: NodeId, bytes: &[u8], other: Option<&[u8]>) {
        if other.is_some() && !targets.is_empty() {
            let offender = self.validators[from].replica.id().0;
            self.conflict_at.entry(offender).or_insert(self.now);
        }
        // Both go to the first target still in a set (not one that left it or never joined),
        // so the equivocation is seen.
        let both = targets
            .iter()
            .position(|&t| {
                let node = self.validators.get(t);
                node.is_none_or(|node| !node.standby && !node.replica.is_retired())
            })
            .unwrap_or(0);
        for (position, &target) in targets.iter().enumerate() {
            match other {
                Some(other) if position == both => {
                    self.send(target, from, bytes.to_vec());
                    self.send(target, from, other.to_vec());
                }
                Some(other) if position % 2 == 1 => self.send(target, from, other.to_vec()),
                _ => self.send(target, from, bytes.to_vec()),
            }
        }
    }
}

/// The vote in `bytes`, changed by `change` and encoded again; `None` if `bytes` holds no vote.
fn rewrite_vote(bytes: &[u8], change: impl FnOnce(&mut Vote)) -> Option<Vec<u8>> {
    match Message::decode(bytes, usize::MAX) {
        Ok(Message::Vote(mut vote)) => {
            change(&mut vote);
            Some(Message::Vote(vote).encode())
        }
        _ => None,
    }
}

/// Re-signs a vote with `key` (which may not be its signer's).
pub(super) fn resign(vote: &mut Vote, key: &Keypair) {
    let fresh = Vote::new(
        &chain(),
        0,
        vote.phase,
        (vote.view, vote.seq),
        vote.digest,
        vote.replica,
        key,
    );
    vote.signature = fresh.signature;
}
