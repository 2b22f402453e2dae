//! The validator: a sans-IO PBFT state machine for the normal case.
//!
//! Feed it with [`Replica::handle_message`], [`Replica::submit`], [`Replica::handle_timeout`] and
//! [`Replica::executed`]; drain [`Replica::poll_output`] after each call and obey the order of
//! what comes out. It never reads a clock, does I/O or draws randomness.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use crate::certificate::{Evidence, QuorumCertificate};
use crate::clients::{ClientTable, Freshness};
use crate::config::{Config, ConfigError, ReplicaId, ValidatorSet};
use crate::crypto::{BatchVerifier, Digest, Keypair, PublicKey};
use crate::error::Error;
use crate::log::{Slot, VoteOutcome};
use crate::merkle;
use crate::message::{
    Batch, Message, Phase, PrePrepare, Reply, Request, Vote, reply_leaf, reply_root_digest,
};
use crate::metrics::Metrics;

/// Where the host must send bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One validator.
    Validator(ReplicaId),
    /// Every validator but this one.
    AllValidators,
    /// A client (or the gateway that speaks for it), by key.
    Client(PublicKey),
}

/// A record the host must make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A vote this replica signed. After a restart the replica must never sign a different
    /// digest for the same phase and slot.
    Signed(Vote),
}

/// A committed batch, handed to the host for execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The sequence number; deliveries come in strictly increasing order without gaps.
    pub seq: u64,
    /// The whole batch, as certified.
    pub batch: Batch,
    /// The quorum certificate over the batch digest.
    pub certificate: QuorumCertificate,
    /// Indices into `batch.requests` of the requests to execute, in order; the others
    /// already executed (exactly-once) and must be skipped.
    pub execute: Vec<u32>,
}

/// What the replica asks of its host. Drain with [`Replica::poll_output`] and act in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Make the record durable (fsync). It must be durable before any `Send` that comes
    /// after it in the output order goes on the wire: that `Send` carries its signature, and
    /// a replica that restarts without the record could sign a conflicting vote.
    Persist(Record),
    /// Send the encoded message. Best effort: the protocol tolerates loss.
    Send {
        /// Who receives it.
        to: Destination,
        /// An encoded [`Message`].
        bytes: Vec<u8>,
    },
    /// Execute the batch's `execute` requests in order, then call [`Replica::executed`] with
    /// their results. Deliveries come in sequence order; execute them in that order.
    Deliver(Delivery),
    /// A validator signed two conflicting votes; the evidence verifies offline with
    /// [`crate::verify_evidence`]. Forward it to whatever decides on punishment.
    Evidence(Evidence),
}

/// A validator replica.
pub struct Replica {
    config: Config,
    validators: ValidatorSet,
    keypair: Keypair,
    id: ReplicaId,
    view: u64,
    /// Every seq at or below `low` is executed and its slot freed: the low watermark.
    low: u64,
    /// The highest seq handed to the host.
    last_delivered: u64,
    /// The primary's next seq to propose.
    next_seq: u64,
    log: BTreeMap<u64, Slot>,
    /// Request digests in a proposal of the log, or pending at the primary.
    in_flight: BTreeSet<Digest>,
    pending: VecDeque<Request>,
    batch_deadline: Option<u64>,
    clients: ClientTable,
    /// Messages from each peer for seqs above the window, replayed when it moves.
    ahead: BTreeMap<PublicKey, VecDeque<Message>>,
    outputs: VecDeque<Output>,
    metrics: Metrics,
}

impl Replica {
    /// A validator with `keypair`, which must be in `validators`, starting from genesis.
    pub fn new(
        config: Config,
        validators: ValidatorSet,
        keypair: Keypair,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let id = validators
            .id_of(&keypair.public_key())
            .ok_or(ConfigError::Invalid(
                "this replica's key is not in the validator set",
            ))?;
        Ok(Replica {
            clients: ClientTable::new(config.max_clients),
            config,
            validators,
            keypair,
            id,
            view: 0,
            low: 0,
            last_delivered: 0,
            next_seq: 1,
            log: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            pending: VecDeque::new(),
            batch_deadline: None,
            ahead: BTreeMap::new(),
            outputs: VecDeque::new(),
            metrics: Metrics::default(),
        })
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether this replica is the primary of the current view.
    pub fn is_primary(&self) -> bool {
        self.validators.primary(self.view) == self.id
    }

    /// The low watermark: every seq up to it is executed.
    pub fn low_watermark(&self) -> u64 {
        self.low
    }

    /// Counters for the host's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Entries held for the network (slots, votes, buffered and pending messages,
    /// remembered clients), to check that memory stays within the config's bounds.
    pub fn memory_footprint(&self) -> usize {
        self.log.len()
            + self.log.values().map(Slot::vote_count).sum::<usize>()
            + self.ahead.values().map(VecDeque::len).sum::<usize>()
            + self.pending.len()
            + self.in_flight.len()
            + self.clients.len()
    }

    /// The next output, in the order the host must act on them.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the replica next wants [`Replica::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.batch_deadline
    }

    /// Time passed: cuts a batch whose delay has run out.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.batch_deadline.is_some_and(|deadline| deadline <= now) {
            self.batch_deadline = None;
            self.propose(now, true);
        }
    }

    /// Bytes arrived from `from`, the peer key the transport authenticated.
    pub fn handle_message(
        &mut self,
        now: u64,
        from: &PublicKey,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.metrics.messages_received += 1;
        let result = Message::decode(bytes, self.config.max_message_bytes)
            .map_err(Error::from)
            .and_then(|message| self.on_message(now, from, message));
        self.count(result)
    }

    /// A request from the host's own clients (in-process, or a gateway it serves).
    pub fn submit(&mut self, now: u64, request: Request) -> Result<(), Error> {
        let result = self.on_request(now, request);
        self.count(result)
    }

    /// The host executed the delivery at `seq` and reports one result per executed request.
    ///
    /// Calls come in delivery order. The replica signs the replies, frees the slot and moves
    /// its window.
    pub fn executed(&mut self, now: u64, seq: u64, results: Vec<Vec<u8>>) -> Result<(), Error> {
        let result = self.on_executed(now, seq, results);
        self.count(result)
    }

    fn count(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        if let Err(err) = &result {
            *self.metrics.rejected.entry(err.label()).or_default() += 1;
        }
        result
    }

    fn high(&self) -> u64 {
        self.low.saturating_add(self.config.window)
    }

    fn on_message(&mut self, now: u64, from: &PublicKey, message: Message) -> Result<(), Error> {
        match message {
            Message::Request(request) => self.on_request(now, request),
            Message::PrePrepare(_) | Message::Vote(_) => {
                if self.validators.id_of(from).is_none() {
                    return Err(Error::NotAValidator);
                }
                self.on_consensus(from, message)
            }
            Message::Reply(_) => Err(Error::UnexpectedMessage("reply")),
        }
    }

    /// Checks view and window; buffers messages above the window.
    fn on_consensus(&mut self, from: &PublicKey, message: Message) -> Result<(), Error> {
        let (view, seq) = match &message {
            Message::PrePrepare(pre_prepare) => (pre_prepare.vote.view, pre_prepare.vote.seq),
            Message::Vote(vote) => (vote.view, vote.seq),
            _ => return Err(Error::UnexpectedMessage(message.kind())),
        };
        if view < self.view {
            return Err(Error::StaleView {
                got: view,
                current: self.view,
            });
        }
        if view > self.view {
            return Err(Error::FutureView {
                got: view,
                current: self.view,
            });
        }
        if seq <= self.low {
            return Err(Error::OutOfWindow {
                seq,
                low: self.low + 1,
                high: self.high(),
            });
        }
        if seq > self.high() {
            let queue = self.ahead.entry(*from).or_default();
            if queue.len() >= self.config.max_future_per_peer {
                return Err(Error::FutureBufferFull);
            }
            queue.push_back(message);
            return Ok(());
        }
        match message {
            Message::PrePrepare(pre_prepare) => self.on_pre_prepare(pre_prepare),
            Message::Vote(vote) => self.on_vote(vote),
            _ => Err(Error::UnexpectedMessage(message.kind())),
        }
    }

    fn on_request(&mut self, now: u64, request: Request) -> Result<(), Error> {
        if request.op.len() > self.config.max_request_bytes {
            return Err(Error::RequestTooLarge {
                len: request.op.len(),
                max: self.config.max_request_bytes,
            });
        }
        match self.clients.freshness(&request.client, request.client_seq) {
            Freshness::Fresh => {}
            Freshness::LastExecuted(Some(reply)) => {
                let bytes = Message::Reply(reply.clone()).encode();
                let to = Destination::Client(request.client);
                self.send(to, bytes);
                return Ok(());
            }
            Freshness::LastExecuted(None) => return Err(Error::Duplicate),
            Freshness::Stale => return Err(Error::StaleRequest),
        }
        let digest = request.digest(&self.config.chain_id);
        // Cheap checks first: a duplicate costs no signature verification.
        if self.in_flight.contains(&digest) {
            return Err(Error::DuplicateRequest);
        }
        if self.is_primary() && self.pending.len() >= self.config.max_pending_requests {
            return Err(Error::Overloaded);
        }
        let key = request.client.verifying_key()?;
        self.metrics.signatures_verified += 1;
        key.verify(&digest, &request.signature)?;
        if !self.is_primary() {
            // Backups hand requests to the primary; they hold no state for them (yet: the
            // view-change timers will).
            let primary = self.validators.primary(self.view);
            self.send(
                Destination::Validator(primary),
                Message::Request(request).encode(),
            );
            return Ok(());
        }
        self.in_flight.insert(digest);
        self.pending.push_back(request);
        self.propose(now, false);
        Ok(())
    }

    /// Cuts batches from the pending requests while the window has room. Without `force`
    /// (the delay has not run out) only full batches go, unless nothing is in flight. Arms
    /// the batch timer for what is left, or disarms it when nothing can be proposed.
    fn propose(&mut self, now: u64, force: bool) {
        while !self.pending.is_empty() && self.next_seq <= self.high() {
            let idle = self.next_seq == self.low + 1;
            if !force && !idle && self.pending.len() < self.config.max_batch_ops {
                break;
            }
            let mut requests = Vec::new();
            let mut bytes = 0;
            while let Some(request) = self.pending.front() {
                let len = request.encoded_len();
                let full = requests.len() >= self.config.max_batch_ops
                    || (!requests.is_empty() && bytes + len > self.config.max_batch_bytes);
                if full {
                    break;
                }
                bytes += len;
                if let Some(request) = self.pending.pop_front() {
                    requests.push(request);
                }
            }
            let batch = Batch { requests };
            let leaves = batch.leaves(&self.config.chain_id);
            let digest = merkle::root(&leaves);
            let seq = self.next_seq;
            self.next_seq += 1;
            let vote = self.sign_vote(Phase::PrePrepare, seq, digest);
            let slot = self.log.entry(seq).or_default();
            slot.digest = Some(digest);
            slot.proposal = Some(vote.clone());
            slot.leaves = leaves;
            slot.batch = Some(batch.clone());
            self.outputs
                .push_back(Output::Persist(Record::Signed(vote.clone())));
            let bytes = Message::PrePrepare(PrePrepare { vote, batch }).encode();
            self.send(Destination::AllValidators, bytes);
            self.advance(seq);
        }
        self.batch_deadline = match self.pending.is_empty() || self.next_seq > self.high() {
            true => None,
            false => Some(
                self.batch_deadline
                    .unwrap_or(now.saturating_add(self.config.batch_delay_ms)),
            ),
        };
    }

    fn on_pre_prepare(&mut self, pre_prepare: PrePrepare) -> Result<(), Error> {
        let PrePrepare { vote, batch } = pre_prepare;
        if vote.phase != Phase::PrePrepare {
            return Err(Error::UnexpectedMessage("pre-prepare with another phase"));
        }
        let primary = self.validators.primary(vote.view);
        if vote.replica != primary {
            return Err(Error::WrongSigner(vote.replica));
        }
        let primary_key = *self.validators.key(primary).ok_or(Error::NotAValidator)?;
        let signed = vote.signed_digest(&self.config.chain_id, self.validators.epoch());
        let seq = vote.seq;
        if let Some(accepted) = self.log.get(&seq).and_then(|slot| slot.proposal.as_ref()) {
            if accepted.digest == vote.digest {
                return Err(Error::Duplicate);
            }
            // A second proposal for the slot: the primary equivocates if it signed both.
            self.metrics.signatures_verified += 1;
            primary_key.verify(&signed, &vote.signature)?;
            let first = accepted.clone();
            return self.report(seq, first, vote);
        }
        let requests = &batch.requests;
        let bytes: usize = requests.iter().map(Request::encoded_len).sum();
        if requests.is_empty()
            || requests.len() > self.config.max_batch_ops
            || bytes > self.config.max_batch_bytes
        {
            return Err(Error::BatchTooLarge);
        }
        if let Some(request) = requests
            .iter()
            .find(|r| r.op.len() > self.config.max_request_bytes)
        {
            return Err(Error::RequestTooLarge {
                len: request.op.len(),
                max: self.config.max_request_bytes,
            });
        }
        let leaves = batch.leaves(&self.config.chain_id);
        if merkle::root(&leaves) != vote.digest {
            return Err(Error::BatchDigestMismatch);
        }
        let mut unique = BTreeSet::new();
        if leaves
            .iter()
            .any(|leaf| !unique.insert(*leaf) || self.in_flight.contains(leaf))
        {
            return Err(Error::DuplicateRequest);
        }
        // One batch check for the primary's signature and every client's.
        let mut verifier = BatchVerifier::new();
        verifier.queue(&primary_key, &signed, &vote.signature);
        for (request, leaf) in requests.iter().zip(&leaves) {
            verifier.queue_key(&request.client, leaf, &request.signature)?;
        }
        self.metrics.signatures_verified += verifier.len() as u64;
        self.metrics.signatures_batch_verified += verifier.len() as u64;
        verifier.verify()?;

        self.in_flight.extend(leaves.iter().copied());
        let slot = self.log.entry(seq).or_default();
        slot.digest = Some(vote.digest);
        slot.proposal = Some(vote.clone());
        slot.leaves = leaves;
        slot.batch = Some(batch);
        if self.id != primary {
            self.cast(Phase::Prepare, seq, vote.digest);
        }
        self.advance(seq);
        Ok(())
    }

    fn on_vote(&mut self, vote: Vote) -> Result<(), Error> {
        if vote.phase == Phase::PrePrepare {
            return Err(Error::UnexpectedMessage(
                "pre-prepare vote without its batch",
            ));
        }
        let key = *self
            .validators
            .key(vote.replica)
            .ok_or(Error::NotAValidator)?;
        if vote.phase == Phase::Prepare && vote.replica == self.validators.primary(vote.view) {
            return Err(Error::WrongSigner(vote.replica));
        }
        let seq = vote.seq;
        if self.log.get(&seq).is_some_and(|slot| slot.has_same(&vote)) {
            return Err(Error::Duplicate);
        }
        self.metrics.signatures_verified += 1;
        key.verify(
            &vote.signed_digest(&self.config.chain_id, self.validators.epoch()),
            &vote.signature,
        )?;
        let slot = self.log.entry(seq).or_default();
        match slot.add_vote(vote.clone()) {
            VoteOutcome::Added => {
                self.advance(seq);
                Ok(())
            }
            VoteOutcome::Duplicate => Err(Error::Duplicate),
            VoteOutcome::Conflict(first) => self.report(seq, first, vote),
        }
    }

    /// Emits evidence of a verified conflicting vote (once per signer and slot).
    fn report(&mut self, seq: u64, first: Vote, second: Vote) -> Result<(), Error> {
        let culprit = second.replica;
        let epoch = self.validators.epoch();
        if let Some(evidence) = self
            .log
            .get_mut(&seq)
            .and_then(|slot| slot.evidence(epoch, first, second))
        {
            self.metrics.evidence_reported += 1;
            self.outputs.push_back(Output::Evidence(evidence));
        }
        Err(Error::Equivocation(culprit))
    }

    /// Moves slot `seq` forward: prepared → commit sent → committed → delivered.
    fn advance(&mut self, seq: u64) {
        let quorum = self.validators.quorum();
        let primary = self.validators.primary(self.view);
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        if !slot.commit_sent
            && slot.is_prepared(quorum, primary)
            && let Some(digest) = slot.digest
        {
            self.cast(Phase::Commit, seq, digest);
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.commit_sent = true;
            }
        }
        let chain = self.config.chain_id;
        let epoch = self.validators.epoch();
        if let Some(slot) = self.log.get_mut(&seq)
            && slot.commit_sent
            && slot.certificate.is_none()
        {
            slot.certificate = slot.commit_certificate(chain, epoch, seq, quorum);
        }
        self.deliver_ready();
    }

    /// Hands committed batches to the host, strictly in sequence order.
    fn deliver_ready(&mut self) {
        while let Some(slot) = self.log.get_mut(&(self.last_delivered + 1)) {
            let Some(certificate) = slot.certificate.clone() else {
                return;
            };
            let Some(batch) = slot.batch.take() else {
                return;
            };
            let seq = self.last_delivered + 1;
            let mut execute = Vec::new();
            for (index, request) in batch.requests.iter().enumerate() {
                if self.clients.freshness(&request.client, request.client_seq) == Freshness::Fresh {
                    self.clients
                        .record_execution(request.client, request.client_seq, seq);
                    execute.push(index as u32);
                    slot.executing.push((request.client, request.client_seq));
                } else {
                    self.metrics.requests_skipped += 1;
                }
            }
            self.metrics.batches_committed += 1;
            self.metrics.requests_committed += batch.requests.len() as u64;
            self.metrics.requests_executed += execute.len() as u64;
            self.last_delivered = seq;
            self.outputs.push_back(Output::Deliver(Delivery {
                seq,
                batch,
                certificate,
                execute,
            }));
        }
    }

    fn on_executed(&mut self, now: u64, seq: u64, results: Vec<Vec<u8>>) -> Result<(), Error> {
        if seq != self.low + 1 || seq > self.last_delivered {
            return Err(Error::HostContract("executed() must follow delivery order"));
        }
        let Some(slot) = self.log.remove(&seq) else {
            return Err(Error::HostContract("executed() for a seq never delivered"));
        };
        let (Some(certificate), Some(proposal)) =
            (slot.certificate.as_ref(), slot.proposal.as_ref())
        else {
            return Err(Error::HostContract("executed() for a seq never delivered"));
        };
        if results.len() != slot.executing.len() {
            // Put the slot back: the host may retry with the right results.
            self.log.insert(seq, slot);
            return Err(Error::HostContract(
                "executed() needs one result per executed request",
            ));
        }
        let chain = self.config.chain_id;
        let leaves: Vec<Digest> = slot
            .executing
            .iter()
            .zip(&results)
            .map(|((client, client_seq), result)| reply_leaf(&chain, client, *client_seq, result))
            .collect();
        let tree = merkle::Tree::new(&leaves);
        let root = tree.root();
        let signed = reply_root_digest(
            &chain,
            self.validators.epoch(),
            proposal.view,
            certificate.seq,
            &root,
        );
        let signature = self.keypair.sign(&signed);
        self.metrics.signatures_created += 1;
        for (index, (&(client, client_seq), result)) in
            slot.executing.iter().zip(results).enumerate()
        {
            let Some(proof) = tree.prove(index) else {
                continue;
            };
            let reply = Reply {
                view: proposal.view,
                seq,
                client,
                client_seq,
                result,
                proof,
                replica: self.id,
                signature,
            };
            self.send(
                Destination::Client(client),
                Message::Reply(reply.clone()).encode(),
            );
            self.clients.store_reply(reply);
        }
        for leaf in &slot.leaves {
            self.in_flight.remove(leaf);
        }
        self.low = seq;
        self.replay_ahead(now);
        if self.is_primary() && !self.pending.is_empty() {
            self.propose(now, false);
        }
        Ok(())
    }

    /// Replays buffered messages that the moved window now covers; drops those below it.
    fn replay_ahead(&mut self, now: u64) {
        let high = self.high();
        let mut ready = Vec::new();
        for (peer, queue) in self.ahead.iter_mut() {
            queue.retain(|message| {
                let seq = match message {
                    Message::PrePrepare(p) => p.vote.seq,
                    Message::Vote(v) => v.seq,
                    _ => 0,
                };
                if seq <= high {
                    ready.push((*peer, message.clone()));
                    false
                } else {
                    true
                }
            });
        }
        self.ahead.retain(|_, queue| !queue.is_empty());
        for (peer, message) in ready {
            let result = self.on_message(now, &peer, message);
            // Failures are counted like any input's; the replay goes on.
            let _ = self.count(result);
        }
    }

    /// Signs a prepare or commit, persists it, then broadcasts it and counts it locally.
    /// The order is the durability contract: the record precedes the send.
    fn cast(&mut self, phase: Phase, seq: u64, digest: Digest) {
        let vote = self.sign_vote(phase, seq, digest);
        self.outputs
            .push_back(Output::Persist(Record::Signed(vote.clone())));
        self.send(
            Destination::AllValidators,
            Message::Vote(vote.clone()).encode(),
        );
        if let Some(slot) = self.log.get_mut(&seq) {
            slot.add_vote(vote);
        }
    }

    fn sign_vote(&mut self, phase: Phase, seq: u64, digest: Digest) -> Vote {
        self.metrics.signatures_created += 1;
        Vote::new(
            &self.config.chain_id,
            self.validators.epoch(),
            phase,
            (self.view, seq),
            digest,
            self.id,
            &self.keypair,
        )
    }

    fn send(&mut self, to: Destination, bytes: Vec<u8>) {
        let copies = match to {
            Destination::AllValidators => self.validators.len().saturating_sub(1),
            _ => 1,
        };
        self.metrics.bytes_sent += (bytes.len() * copies) as u64;
        self.outputs.push_back(Output::Send { to, bytes });
    }
}
