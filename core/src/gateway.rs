//! The gateway role: terminates many clients' sessions, sends their requests on in batches to
//! the primary it knows (to every validator when replies are late), and hands each client the
//! f + 1 matching signed replies that prove its result. A gateway never takes part in
//! consensus: it holds no validator key, and validators take only requests from it.
//!
//! Authentication is end to end or gateway-attested. End to end, every request carries its
//! client's signature, and every validator checks it. The gateway checks it too, in one
//! batch check per batch it sends (bisected only if it fails), so that a forging client costs
//! only the gateway: a validator closes a connection after a few forgeries, and one client
//! must not cut the others off. Gateway-attested ([`Gateway::attesting`]), a client sends
//! unsigned requests on a connection whose handshake proved its key
//! ([`Gateway::submit_unsigned`]), and the gateway signs one Merkle root over each batch it
//! sends ([`crate::attest`]): validators check one signature per batch instead of one per
//! request, and the gateway answers for what it signed.
//!
//! What a client can cost is bounded before any hashing: a session per client key (at most
//! [`GatewayConfig::max_sessions`]), a token bucket per session
//! ([`GatewayConfig::client_rate`] requests per second, [`GatewayConfig::client_burst`] at
//! once), and outstanding requests per client and in all. Every refusal is a [`Shed`] the host
//! shows the client, counted by reason in [`GatewayMetrics::shed`].
//!
//! A client that forges signatures pays for it: each forgery costs it a whole burst of its
//! bucket (the balance goes below zero, down to one burst of debt), and its bucket outlives
//! its session, so reconnecting buys nothing (a fresh key starts with a fresh bucket: keys
//! cost nothing to make, so `max_sessions` bounds what many keys can take).
//!
//! Replies: a validator signs one root per batch, so the gateway checks one signature per
//! (validator, batch), not per reply ([`ReplyCache`], a slice per validator). A reply counts
//! only from the validator that signed it, once, and replies are counted by (seq, result):
//! the f + 1 that agree are handed over each with its own signature and Merkle path, so each
//! verifies for the client, which need not trust the gateway
//! ([`crate::Client::handle_reply`] takes them as they are).

mod attested;
mod config;
mod epochs;
mod refusals;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

pub use self::config::{GatewayConfig, GatewayMetrics, GatewayOutput, Shed};
use crate::client::{ClientError, ReplyCache, check_root_signature, reply_root};
use crate::config::{ConfigError, ReplicaId, ValidatorSet};
use crate::crypto::{Digest, Keypair, Pool, PublicKey, Signature, digest_of};
use crate::merkle::InclusionProof;
use crate::message::Message;
use crate::replica::signatures::check_request_signatures;
use crate::statement::{Reply, Request};

/// A client key's state: its token bucket, whether a session is open, and its outstanding
/// requests.
#[derive(Debug)]
struct Session {
    /// Thousandths of a request the client may send now; below zero after a forgery.
    tokens: i64,
    /// When `tokens` was last refilled, in ms.
    refilled: u64,
    /// Whether a session is open (a closed one is kept for its bucket, a while).
    open: bool,
    /// How many times its sessions closed.
    closes: u64,
    /// Client seqs queued or awaiting replies.
    outstanding: BTreeSet<u64>,
}

/// A request queued for a batch or awaiting replies.
#[derive(Debug)]
struct Pending {
    /// The request: as the client sent it, and attested once sent if it came unsigned.
    request: Request,
    /// The request's digest, which its client signed (or the gateway attests).
    digest: Digest,
    /// Bytes it counts in `pending_bytes` and `queued_bytes`: its encoding on arrival.
    bytes: usize,
    /// Whether it came unsigned, for the gateway to attest.
    unsigned: bool,
    /// When the gateway accepted it, in ms.
    accepted: u64,
    /// When it goes to every validator, once sent (in ms).
    deadline: Option<u64>,
    retries: u32,
    /// Each validator's first valid reply.
    votes: BTreeMap<ReplicaId, Vote>,
    /// Each validator's first valid refusal.
    refusals: BTreeMap<ReplicaId, crate::RequestRefusal>,
}

/// One validator's reply, as counted: what it says and what proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Vote {
    /// (seq, result digest): what f + 1 must agree on. Not the reply root: an honest
    /// validator that answers a retransmission after a state transfer signs a root of its
    /// own for it.
    says: (u64, Digest),
    view: u64,
    proof: InclusionProof,
    signature: Signature,
}

/// Reply statements a gateway remembers as checked per validator: a few batches' worth.
const REPLY_CACHE: usize = 1024;

/// The gateway: sans-IO like [`crate::Replica`]. The host opens a session per client
/// connection whose key the handshake proved ([`Gateway::open`]), hands over requests
/// ([`Gateway::submit`]) and validators' replies ([`Gateway::handle_reply`]), calls
/// [`Gateway::handle_timeout`] when [`Gateway::poll_timeout`] passes, and drains
/// [`Gateway::poll_output`] after each call.
pub struct Gateway {
    config: GatewayConfig,
    validators: ValidatorSet,
    /// Every key with an open session, and closed ones still remembered.
    sessions: BTreeMap<PublicKey, Session>,
    open_sessions: usize,
    /// Sessions closed, oldest first, each with its key's count of closes then: a key is
    /// forgotten when its latest close leaves the queue, after `max_sessions` more.
    closed: VecDeque<(PublicKey, u64)>,
    pending: BTreeMap<(PublicKey, u64), Pending>,
    /// Encoded bytes of the requests in `pending`.
    pending_bytes: usize,
    /// Requests waiting for the next batch, oldest first, and their encoded bytes.
    queue: VecDeque<(PublicKey, u64)>,
    queued_bytes: usize,
    /// When the queued requests go even if the batch is not full, in ms.
    batch_deadline: Option<u64>,
    /// (deadline, client, client seq) of each sent request awaiting replies.
    deadlines: BTreeSet<(u64, PublicKey, u64)>,
    /// Each validator's highest view among its replies that verified (at most n entries).
    views: BTreeMap<ReplicaId, u64>,
    /// The (f + 1)-th highest of `views`: where the primary is. At least one honest
    /// validator has reached it, so no f validators can raise it, and honest views only
    /// grow, so none can hold it back either.
    view: u64,
    replies: ReplyCache,
    outputs: VecDeque<GatewayOutput>,
    metrics: GatewayMetrics,
    /// The key it attests unsigned requests with, in gateway-attested mode.
    attester: Option<Keypair>,
    /// The epoch changes it followed, and the clients handed them ([`epochs`]).
    epochs: epochs::Chain,
}

impl Gateway {
    /// A gateway in front of `validators`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for a limit or timer of zero.
    pub fn new(config: GatewayConfig, validators: ValidatorSet) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(Gateway {
            config,
            validators,
            sessions: BTreeMap::new(),
            open_sessions: 0,
            closed: VecDeque::new(),
            views: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            batch_deadline: None,
            deadlines: BTreeSet::new(),
            view: 0,
            replies: ReplyCache::new(REPLY_CACHE),
            outputs: VecDeque::new(),
            metrics: GatewayMetrics::default(),
            attester: None,
            epochs: epochs::Chain::default(),
        })
    }

    /// Opens a session for `client` at `now` (ms), whose key the transport's handshake
    /// proved; opening one that is open already keeps it as it is. A key whose session
    /// closed lately gets its bucket back as it was.
    ///
    /// # Errors
    ///
    /// [`Shed::SessionsFull`] at [`GatewayConfig::max_sessions`]; [`Shed::BadKey`].
    pub fn open(&mut self, now: u64, client: PublicKey) -> Result<(), Shed> {
        if self
            .sessions
            .get(&client)
            .is_some_and(|session| session.open)
        {
            return Ok(());
        }
        let refused = if self.open_sessions >= self.config.max_sessions {
            Some(Shed::SessionsFull)
        } else {
            client.check().err().map(|_| Shed::BadKey)
        };
        if let Some(reason) = refused {
            return Err(self.shed(reason));
        }
        let full = self.burst();
        let session = self.sessions.entry(client).or_insert(Session {
            tokens: full,
            refilled: now,
            open: false,
            closes: 0,
            outstanding: BTreeSet::new(),
        });
        session.open = true;
        self.open_sessions += 1;
        // A client that connects again may have restarted and lost the chain it was handed.
        self.epochs.forget(&client);
        Ok(())
    }

    /// Closes `client`'s session and forgets its outstanding requests (they may still
    /// execute: the client learns their results by sending them again, here or elsewhere).
    /// Its bucket is remembered until `max_sessions` more sessions have closed.
    pub fn close(&mut self, client: &PublicKey) {
        let Some(session) = self.sessions.get_mut(client).filter(|session| session.open) else {
            return;
        };
        session.open = false;
        session.closes += 1;
        let closes = session.closes;
        let outstanding = core::mem::take(&mut session.outstanding);
        self.open_sessions = self.open_sessions.saturating_sub(1);
        self.queue.retain(|(queued, _)| queued != client);
        for client_seq in outstanding {
            if let Some(pending) = self.take_pending(&(*client, client_seq)) {
                if pending.deadline.is_none() {
                    self.queued_bytes = self.queued_bytes.saturating_sub(pending.bytes);
                }
                self.forget(*client, client_seq, &pending);
            }
        }
        self.closed.push_back((*client, closes));
        while self.closed.len() > self.config.max_sessions {
            let Some((oldest, at)) = self.closed.pop_front() else {
                break;
            };
            // Only its latest close forgets it, and only if it did not reopen since.
            if self
                .sessions
                .get(&oldest)
                .is_some_and(|session| !session.open && session.closes == at)
            {
                self.sessions.remove(&oldest);
            }
        }
    }

    /// A whole bucket, in thousandths of a request.
    fn burst(&self) -> i64 {
        i64::try_from(self.config.client_burst.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// A request from `client`'s session at `now` (ms): queued for the next batch, which goes
    /// when it is full or after [`GatewayConfig::batch_delay_ms`]. Its signature is checked
    /// with the batch; a forged one is answered with [`GatewayOutput::Refused`].
    ///
    /// # Errors
    ///
    /// The [`Shed`] that refused it: checked in order of cost, the rate limit first (a copy
    /// of an outstanding request is [`Shed::Duplicate`] and costs no token).
    pub fn submit(&mut self, now: u64, client: &PublicKey, request: Request) -> Result<(), Shed> {
        self.accept(now, client, request, false)
    }

    pub(super) fn accept(
        &mut self,
        now: u64,
        client: &PublicKey,
        request: Request,
        unsigned: bool,
    ) -> Result<(), Shed> {
        let verdict = self.admit(now, client, request, unsigned);
        if let Err(reason) = verdict {
            return Err(self.shed(reason));
        }
        self.metrics.requests_accepted += 1;
        if self.queue.len() >= self.config.max_batch_ops
            || self.queued_bytes >= self.config.max_batch_bytes
        {
            self.flush(now);
        }
        Ok(())
    }

    fn admit(
        &mut self,
        now: u64,
        client: &PublicKey,
        request: Request,
        unsigned: bool,
    ) -> Result<(), Shed> {
        let config = &self.config;
        let session = self
            .sessions
            .get_mut(client)
            .filter(|session| session.open)
            .ok_or(Shed::NoSession)?;
        // A copy of a request it carries already costs nothing: clients retransmit, and a
        // link that connects late delivers them all at once.
        if request.client == *client && session.outstanding.contains(&request.client_seq) {
            return Err(Shed::Duplicate);
        }
        refill(session, now, config.client_rate, config.client_burst);
        if session.tokens < 1000 {
            return Err(Shed::RateLimited);
        }
        session.tokens -= 1000;
        if request.client != *client {
            return Err(Shed::WrongClient);
        }
        // Attestations are gateways' to make: a client's would only be refused downstream.
        if request.attestation.is_some() {
            return Err(Shed::Attested);
        }
        if request.op.len() > config.max_request_bytes {
            return Err(Shed::TooLarge {
                len: request.op.len(),
                max: config.max_request_bytes,
            });
        }
        if session.outstanding.len() >= config.max_outstanding_per_client {
            return Err(Shed::ClientBusy);
        }
        let len = request.encoded_len();
        if self.pending.len() >= config.max_outstanding
            || self.pending_bytes.saturating_add(len) > config.max_outstanding_bytes
        {
            return Err(Shed::Overloaded);
        }
        session.outstanding.insert(request.client_seq);
        let key = (*client, request.client_seq);
        self.queued_bytes += len;
        self.queue.push_back(key);
        if self.batch_deadline.is_none() {
            self.batch_deadline = Some(now.saturating_add(config.batch_delay_ms));
        }
        let digest = request.digest(&config.chain_id);
        self.pending_bytes += len;
        self.pending.insert(
            key,
            Pending {
                request,
                digest,
                bytes: len,
                unsigned,
                accepted: now,
                deadline: None,
                retries: 0,
                votes: BTreeMap::new(),
                refusals: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// A reply from validator `from`'s connection.
    ///
    /// # Errors
    ///
    /// Why it was not counted ([`ClientError`]): undecodable or over
    /// [`GatewayConfig::max_reply_bytes`], not a reply, signed by another validator than
    /// `from`, for no outstanding request, or a path or signature that does not verify.
    pub fn handle_reply(&mut self, from: ReplicaId, bytes: &[u8]) -> Result<(), ClientError> {
        let verdict = self.count_reply(from, bytes);
        if verdict.is_err() {
            self.metrics.replies_rejected += 1;
        }
        verdict
    }

    fn count_reply(&mut self, from: ReplicaId, bytes: &[u8]) -> Result<(), ClientError> {
        let reply = match Message::decode(bytes, self.config.max_reply_bytes)
            .map_err(ClientError::Decode)?
        {
            Message::Reply(reply) => reply,
            Message::EpochChange(change) => return self.on_epoch_change(&change),
            Message::Refusal(refusal) => return self.count_refusal(from, refusal),
            _ => return Err(ClientError::NotAReply),
        };
        // A validator sends its own replies: one naming another signer would let the sender
        // stand in for that signer's vote.
        if reply.replica != from {
            return Err(ClientError::NotFromSigner {
                claimed: reply.replica,
                from,
            });
        }
        let key = (reply.client, reply.client_seq);
        let pending = self
            .pending
            .get_mut(&key)
            .ok_or(ClientError::NotOutstanding)?;
        // A reply to another request under this number is not this request's answer.
        if reply.request != pending.digest {
            return Err(ClientError::AnotherRequest);
        }
        if pending.votes.contains_key(&reply.replica) {
            // A validator's first valid reply counts; a second would cost a check for nothing.
            return Ok(());
        }
        let chain = &self.config.chain_id;
        let root = reply_root(chain, &reply)?;
        check_root_signature(chain, &self.validators, &reply, &root, &mut self.replies)?;
        let says = (reply.seq, digest_of(b"pbft/v1/result", &reply.result));
        let highest = self.views.entry(reply.replica).or_default();
        *highest = (*highest).max(reply.view);
        pending.votes.insert(
            reply.replica,
            Vote {
                says,
                view: reply.view,
                proof: reply.proof.clone(),
                signature: reply.signature,
            },
        );
        let agreeing = pending
            .votes
            .values()
            .filter(|vote| vote.says == says)
            .count();
        self.view = self
            .view
            .max(quorum_view(&self.views, self.validators.reply_quorum()));
        if agreeing < self.validators.reply_quorum() {
            return Ok(());
        }
        let Some(pending) = self.take_pending(&key) else {
            return Ok(());
        };
        self.forget(reply.client, reply.client_seq, &pending);
        if let Some(session) = self.sessions.get_mut(&reply.client) {
            session.outstanding.remove(&reply.client_seq);
        }
        let replies: Vec<Reply> = pending
            .votes
            .into_iter()
            .filter(|(_, vote)| vote.says == says)
            .map(|(replica, vote)| Reply {
                view: vote.view,
                replica,
                proof: vote.proof,
                signature: vote.signature,
                ..reply.clone()
            })
            .collect();
        self.metrics.requests_answered += 1;
        let chain = self.chain_for(reply.client);
        self.outputs.push_back(GatewayOutput::Answered {
            client: reply.client,
            client_seq: reply.client_seq,
            seq: reply.seq,
            replies,
            chain,
        });
        Ok(())
    }

    /// When (ms) [`Gateway::handle_timeout`] is next due, if anything waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let retransmit = self.deadlines.first().map(|(at, _, _)| *at);
        match (self.batch_deadline, retransmit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: sends a batch whose delay ran out; sends every request whose replies are
    /// late to every validator (and backs off its next deadline), or gives up on it
    /// ([`Shed::TimedOut`]) after [`GatewayConfig::request_timeout_ms`].
    pub fn handle_timeout(&mut self, now: u64) {
        if self.batch_deadline.is_some_and(|at| at <= now) {
            self.flush(now);
        }
        while let Some(&(at, client, client_seq)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let key = (client, client_seq);
            let Some(pending) = self.pending.get_mut(&key) else {
                continue;
            };
            if now.saturating_sub(pending.accepted) >= self.config.request_timeout_ms {
                if let Some(pending) = self.take_pending(&key) {
                    self.forget(client, client_seq, &pending);
                }
                if let Some(session) = self.sessions.get_mut(&client) {
                    session.outstanding.remove(&client_seq);
                }
                self.refuse(client, client_seq, Shed::TimedOut);
                continue;
            }
            pending.retries = pending.retries.saturating_add(1);
            let factor = 1u64 << pending.retries.min(3);
            let next = now.saturating_add(self.config.retransmit_ms.saturating_mul(factor));
            pending.deadline = Some(next);
            self.deadlines.insert((next, client, client_seq));
            self.metrics.retransmissions += 1;
            let bytes = Message::Request(pending.request.clone()).encode();
            for to in self.validators.ids() {
                self.outputs.push_back(GatewayOutput::Transmit {
                    to,
                    client,
                    again: true,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<GatewayOutput> {
        self.outputs.pop_front()
    }

    /// The validator new batches go to: the primary of the (f + 1)-th highest view among the
    /// validators' verified replies.
    pub fn primary(&self) -> ReplicaId {
        self.validators.primary(self.view)
    }

    /// Client sessions open.
    pub fn sessions(&self) -> usize {
        self.open_sessions
    }

    /// The keys of the clients with a session open.
    pub fn clients(&self) -> impl Iterator<Item = &PublicKey> + '_ {
        self.sessions
            .iter()
            .filter(|(_, session)| session.open)
            .map(|(key, _)| key)
    }

    /// Requests queued for a batch or awaiting replies.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Requests queued for the next batch.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// What the gateway has done and refused.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Sends the queued requests whose signatures hold to the primary, in batches of at most
    /// `max_batch_ops` requests and `max_batch_bytes`; refuses the forged ones.
    fn flush(&mut self, now: u64) {
        self.batch_deadline = None;
        while !self.queue.is_empty() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(&key) = self.queue.front() {
                let Some(pending) = self.pending.get(&key) else {
                    self.queue.pop_front();
                    continue;
                };
                let len = pending.bytes;
                let full = batch.len() >= self.config.max_batch_ops
                    || (!batch.is_empty() && bytes + len > self.config.max_batch_bytes);
                if full {
                    break;
                }
                bytes += len;
                self.queued_bytes = self.queued_bytes.saturating_sub(len);
                batch.push(key);
                self.queue.pop_front();
            }
            self.send_batch(now, &batch);
        }
        self.queued_bytes = 0;
    }

    fn send_batch(&mut self, now: u64, keys: &[(PublicKey, u64)]) {
        self.attest(keys);
        // The signed requests' signatures, checked together (attested ones carry the
        // gateway's own); keys kept beside them, so each verdict meets its own key.
        let signed: Vec<((PublicKey, u64), &Pending)> = keys
            .iter()
            .filter_map(|key| self.pending.get(key).map(|pending| (*key, pending)))
            .filter(|(_, pending)| !pending.unsigned)
            .collect();
        let requests: Vec<&Request> = signed.iter().map(|(_, p)| &p.request).collect();
        let leaves: Vec<Digest> = signed.iter().map(|(_, p)| p.digest).collect();
        let chain = self.config.chain_id;
        let (verdicts, checked) =
            check_request_signatures(&Pool::default(), &chain, &requests, &leaves);
        self.metrics.signatures_verified += checked.signatures;
        let forged: BTreeSet<(PublicKey, u64)> = signed
            .iter()
            .zip(verdicts)
            .filter(|(_, verdict)| verdict.is_err())
            .map(|((key, _), _)| *key)
            .collect();
        let primary = self.primary();
        let deadline = now.saturating_add(self.config.retransmit_ms);
        let mut sent = 0;
        let penalty = self.burst();
        for &(client, client_seq) in keys {
            let key = (client, client_seq);
            if forged.contains(&key) {
                self.take_pending(&key);
                if let Some(session) = self.sessions.get_mut(&client) {
                    session.outstanding.remove(&client_seq);
                    // A forgery costs the client a whole burst of requests, down to a debt of
                    // one burst: at most burst / rate seconds of silence.
                    session.tokens = session.tokens.saturating_sub(penalty).max(-penalty);
                }
                self.refuse(client, client_seq, Shed::BadSignature);
                continue;
            }
            let Some(pending) = self.pending.get_mut(&key) else {
                continue;
            };
            pending.deadline = Some(deadline);
            self.deadlines.insert((deadline, client, client_seq));
            let bytes = Message::Request(pending.request.clone()).encode();
            self.outputs.push_back(GatewayOutput::Transmit {
                to: primary,
                client,
                again: false,
                bytes,
            });
            sent += 1;
        }
        if sent > 0 {
            self.metrics.batches_sent += 1;
            self.metrics.requests_sent += sent;
        }
    }

    /// Removes a pending request, and its bytes from the count.
    fn take_pending(&mut self, key: &(PublicKey, u64)) -> Option<Pending> {
        let pending = self.pending.remove(key)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(pending.bytes);
        Some(pending)
    }

    /// Drops what indexes a request no longer pending.
    fn forget(&mut self, client: PublicKey, client_seq: u64, pending: &Pending) {
        if let Some(at) = pending.deadline {
            self.deadlines.remove(&(at, client, client_seq));
        }
    }

    /// Answers a request accepted earlier with `reason`, and counts it.
    fn refuse(&mut self, client: PublicKey, client_seq: u64, reason: Shed) {
        self.shed(reason);
        self.outputs.push_back(GatewayOutput::Refused {
            client,
            client_seq,
            reason,
        });
    }

    /// Counts a refusal; returns it.
    pub(super) fn shed(&mut self, reason: Shed) -> Shed {
        *self.metrics.shed.entry(reason.label()).or_default() += 1;
        reason
    }
}

/// The `quorum`-th highest of the validators' `views` (0 while fewer have replied).
fn quorum_view(views: &BTreeMap<ReplicaId, u64>, quorum: usize) -> u64 {
    let mut highest: Vec<u64> = views.values().copied().collect();
    highest.sort_unstable_by(|a, b| b.cmp(a));
    highest.get(quorum.saturating_sub(1)).copied().unwrap_or(0)
}

/// Refills `session`'s bucket for the time since its last refill: `rate` requests a second,
/// up to `burst`, kept in thousandths of a request (1 ms at 1 request/s is 1 thousandth).
fn refill(session: &mut Session, now: u64, rate: u64, burst: u64) {
    let elapsed = now.saturating_sub(session.refilled);
    session.refilled = session.refilled.max(now);
    let cap = i64::try_from(burst.saturating_mul(1000)).unwrap_or(i64::MAX);
    let added = i64::try_from(elapsed.saturating_mul(rate)).unwrap_or(i64::MAX);
    session.tokens = session.tokens.saturating_add(added).min(cap);
}

#[cfg(test)]
mod tests;
