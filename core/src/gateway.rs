//! The gateway role: terminates many clients' sessions, sends their requests on in batches to
//! the primary it knows (to every validator when replies are late), and hands each client the
//! f + 1 matching signed replies that prove its result. A gateway never takes part in
//! consensus: it holds no validator key, and validators take only requests from it.
//!
//! Authentication is end to end: every request carries its client's signature, and every
//! validator checks it. The gateway checks it too, in one batch check per batch it sends
//! (bisected only if it fails), so that a forging client costs only the gateway: a validator
//! closes a connection after a few forgeries, and one client must not cut the others off.
//!
//! What a client can cost is bounded before any hashing: a session per client key (at most
//! [`GatewayConfig::max_sessions`]), a token bucket per session
//! ([`GatewayConfig::client_rate`] requests per second, [`GatewayConfig::client_burst`] at
//! once), and outstanding requests per client and in all. Every refusal is a [`Shed`] the host
//! shows the client, counted by reason in [`GatewayMetrics::shed`].
//!
//! A client that forges signatures pays for it: each forgery costs it a whole burst of its
//! bucket (the balance goes below zero), and its bucket outlives its session, so
//! reconnecting buys nothing.
//!
//! Replies: a validator signs one root per batch, so the gateway checks one signature per
//! (validator, batch), not per reply ([`ReplyCache`], a slice per validator). A reply counts
//! only from the validator that signed it, once, and replies are counted by (seq, result):
//! the f + 1 that agree are handed over each with its own signature and Merkle path, so each
//! verifies for the client, which need not trust the gateway
//! ([`crate::Client::handle_reply`] takes them as they are).

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use crate::client::{ClientError, ReplyCache, check_root_signature, reply_root};
use crate::config::{ChainId, ConfigError, ReplicaId, ValidatorSet};
use crate::crypto::{Digest, Pool, PublicKey, Signature, digest_of};
use crate::merkle::InclusionProof;
use crate::message::Message;
use crate::replica::signatures::check_request_signatures;
use crate::statement::{Reply, Request};

/// A gateway's limits and timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The network the requests are signed for.
    pub chain_id: ChainId,
    /// Client sessions open at once, at most.
    pub max_sessions: usize,
    /// Requests one client may have queued or awaiting replies at once.
    pub max_outstanding_per_client: usize,
    /// Requests queued or awaiting replies across all clients, at most.
    pub max_outstanding: usize,
    /// Requests per second a client may send, sustained (its token bucket's refill rate).
    pub client_rate: u64,
    /// Requests a client may send at once above its rate (its token bucket's size, >= 1).
    pub client_burst: u64,
    /// Requests in one batch sent to a validator, at most.
    pub max_batch_ops: usize,
    /// Encoded request bytes in one batch, at most (a single larger request goes alone).
    pub max_batch_bytes: usize,
    /// Longest a request waits for its batch to fill, in ms.
    pub batch_delay_ms: u64,
    /// Largest operation, in bytes: the network's `max_request_bytes` (a larger one would be
    /// refused by every validator, so the gateway refuses it first).
    pub max_request_bytes: usize,
    /// How long a request waits for f + 1 replies before it goes to every validator, in ms;
    /// each retry doubles it, up to 8×.
    pub retransmit_ms: u64,
    /// How long a request may go unanswered before the gateway gives up on it, in ms
    /// (checked at each retransmission, so it fires up to one back-off interval later).
    pub request_timeout_ms: u64,
    /// Largest reply decoded, in bytes.
    pub max_reply_bytes: usize,
}

impl GatewayConfig {
    /// Defaults for `chain_id`: 16,384 sessions; per client 64 outstanding, 1,000 requests/s
    /// and a burst of 200; 65,536 outstanding in all; batches of 256 requests or 1 MiB after
    /// at most 2 ms; 64 KiB operations; retransmission after 250 ms; give up after 30 s.
    pub fn new(chain_id: ChainId) -> Self {
        GatewayConfig {
            chain_id,
            max_sessions: 16_384,
            max_outstanding_per_client: 64,
            max_outstanding: 65_536,
            client_rate: 1_000,
            client_burst: 200,
            max_batch_ops: 256,
            max_batch_bytes: 1 << 20,
            batch_delay_ms: 2,
            max_request_bytes: 64 << 10,
            retransmit_ms: crate::client::DEFAULT_RETRANSMIT_MS,
            request_timeout_ms: 30_000,
            max_reply_bytes: crate::client::DEFAULT_MAX_REPLY_BYTES,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            (self.max_sessions as u64, "max_sessions must be positive"),
            (
                self.max_outstanding_per_client as u64,
                "max_outstanding_per_client must be positive",
            ),
            (
                self.max_outstanding as u64,
                "max_outstanding must be positive",
            ),
            (self.client_rate, "client_rate must be positive"),
            (self.client_burst, "client_burst must be positive"),
            (self.max_batch_ops as u64, "max_batch_ops must be positive"),
            (self.retransmit_ms, "retransmit_ms must be positive"),
            (
                self.request_timeout_ms,
                "request_timeout_ms must be positive",
            ),
        ];
        match positive.iter().find(|(value, _)| *value == 0) {
            Some((_, why)) => Err(ConfigError::Invalid(why)),
            None => Ok(()),
        }
    }
}

/// Why the gateway refused a client's session or request. The host answers the client with
/// it; every refusal of a request counts in [`GatewayMetrics::shed`] under [`Shed::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// The gateway holds [`GatewayConfig::max_sessions`] sessions.
    #[error("the gateway serves as many clients as it may; try another gateway")]
    SessionsFull,
    /// The client's key breaks the key rule (non-canonical or small order).
    #[error("the client key is not a valid ed25519 key")]
    BadKey,
    /// No session is open for the request's client.
    #[error("no session is open for this client")]
    NoSession,
    /// The request is signed by another key than the session's.
    #[error("the request is signed by another client than the session's")]
    WrongClient,
    /// The client sent faster than [`GatewayConfig::client_rate`] allows.
    #[error("over the client's rate limit; slow down")]
    RateLimited,
    /// The client has [`GatewayConfig::max_outstanding_per_client`] requests outstanding.
    #[error("the client has as many requests outstanding as it may; wait for replies")]
    ClientBusy,
    /// The gateway holds [`GatewayConfig::max_outstanding`] requests.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// The operation is over [`GatewayConfig::max_request_bytes`].
    #[error("operation of {len} bytes; the network takes at most {max}")]
    TooLarge {
        /// The operation's size, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A request with this client seq is outstanding already.
    #[error("a request with this number is outstanding already")]
    Duplicate,
    /// The client's signature does not verify.
    #[error("the request's signature does not verify")]
    BadSignature,
    /// No f + 1 matching replies came within [`GatewayConfig::request_timeout_ms`].
    #[error("no result within the gateway's timeout; the request may still execute")]
    TimedOut,
}

impl Shed {
    /// A short stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Shed::SessionsFull => "sessions_full",
            Shed::BadKey => "bad_key",
            Shed::NoSession => "no_session",
            Shed::WrongClient => "wrong_client",
            Shed::RateLimited => "rate_limited",
            Shed::ClientBusy => "client_busy",
            Shed::Overloaded => "overloaded",
            Shed::TooLarge { .. } => "too_large",
            Shed::Duplicate => "duplicate",
            Shed::BadSignature => "bad_signature",
            Shed::TimedOut => "timed_out",
        }
    }
}

/// What the gateway hands its host, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayOutput {
    /// Send these bytes (an encoded [`Message::Request`]) to validator `to`.
    Transmit {
        /// The validator.
        to: ReplicaId,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// A client's request has its result: hand the client these f + 1 matching replies
    /// (each a [`Message::Reply`] to encode), which it verifies itself.
    Answered {
        /// The client.
        client: PublicKey,
        /// The request answered.
        client_seq: u64,
        /// The seq whose batch held it.
        seq: u64,
        /// f + 1 signed replies with one result, from distinct validators.
        replies: Vec<Reply>,
    },
    /// A request the gateway accepted was refused later: tell the client why.
    Refused {
        /// The client.
        client: PublicKey,
        /// The request refused.
        client_seq: u64,
        /// Why.
        reason: Shed,
    },
}

/// What a gateway has done and refused, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayMetrics {
    /// Requests accepted from clients.
    pub requests_accepted: u64,
    /// Requests refused, by [`Shed::label`] (sessions refused count under `sessions_full`
    /// and `bad_key`).
    pub shed: BTreeMap<&'static str, u64>,
    /// Batches sent to a primary.
    pub batches_sent: u64,
    /// Requests in them.
    pub requests_sent: u64,
    /// Requests sent again to every validator because their replies were late.
    pub retransmissions: u64,
    /// Requests answered with f + 1 matching replies.
    pub requests_answered: u64,
    /// Client signatures checked (each time checked, in a batch or alone).
    pub signatures_verified: u64,
    /// Replies not counted, by reason (undecodable, not outstanding, bad signature, ...).
    pub replies_rejected: u64,
}

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
    /// Client seqs queued or awaiting replies.
    outstanding: BTreeSet<u64>,
}

/// A request queued for a batch or awaiting replies.
#[derive(Debug)]
struct Pending {
    request: Request,
    /// The request's digest, which its client signed.
    digest: Digest,
    /// When the gateway accepted it, in ms.
    accepted: u64,
    /// When it goes to every validator, once sent (in ms).
    deadline: Option<u64>,
    retries: u32,
    /// Each validator's first valid reply.
    votes: BTreeMap<ReplicaId, Vote>,
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
    /// Keys whose sessions closed, oldest first: at most `max_sessions` are remembered.
    closed: VecDeque<PublicKey>,
    pending: BTreeMap<(PublicKey, u64), Pending>,
    /// Requests waiting for the next batch, oldest first, and their encoded bytes.
    queue: VecDeque<(PublicKey, u64)>,
    queued_bytes: usize,
    /// When the queued requests go even if the batch is not full, in ms.
    batch_deadline: Option<u64>,
    /// (deadline, client, client seq) of each sent request awaiting replies.
    deadlines: BTreeSet<(u64, PublicKey, u64)>,
    /// The highest view a result came from: where the primary is.
    view: u64,
    replies: ReplyCache,
    outputs: VecDeque<GatewayOutput>,
    metrics: GatewayMetrics,
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
            pending: BTreeMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            batch_deadline: None,
            deadlines: BTreeSet::new(),
            view: 0,
            replies: ReplyCache::new(REPLY_CACHE),
            outputs: VecDeque::new(),
            metrics: GatewayMetrics::default(),
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
            outstanding: BTreeSet::new(),
        });
        session.open = true;
        self.open_sessions += 1;
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
        let outstanding = core::mem::take(&mut session.outstanding);
        self.open_sessions = self.open_sessions.saturating_sub(1);
        self.queue.retain(|(queued, _)| queued != client);
        for client_seq in outstanding {
            if let Some(pending) = self.pending.remove(&(*client, client_seq)) {
                if pending.deadline.is_none() {
                    let len = pending.request.encoded_len();
                    self.queued_bytes = self.queued_bytes.saturating_sub(len);
                }
                self.forget(*client, client_seq, &pending);
            }
        }
        self.closed.push_back(*client);
        while self.closed.len() > self.config.max_sessions {
            let Some(oldest) = self.closed.pop_front() else {
                break;
            };
            // Unless it reopened since (and may close again: then it is queued again).
            if self
                .sessions
                .get(&oldest)
                .is_some_and(|session| !session.open)
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
    /// The [`Shed`] that refused it: checked in order of cost, the rate limit first.
    pub fn submit(&mut self, now: u64, client: &PublicKey, request: Request) -> Result<(), Shed> {
        let verdict = self.admit(now, client, request);
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

    fn admit(&mut self, now: u64, client: &PublicKey, request: Request) -> Result<(), Shed> {
        let config = &self.config;
        let session = self
            .sessions
            .get_mut(client)
            .filter(|session| session.open)
            .ok_or(Shed::NoSession)?;
        refill(session, now, config.client_rate, config.client_burst);
        if session.tokens < 1000 {
            return Err(Shed::RateLimited);
        }
        session.tokens -= 1000;
        if request.client != *client {
            return Err(Shed::WrongClient);
        }
        if request.op.len() > config.max_request_bytes {
            return Err(Shed::TooLarge {
                len: request.op.len(),
                max: config.max_request_bytes,
            });
        }
        if session.outstanding.contains(&request.client_seq) {
            return Err(Shed::Duplicate);
        }
        if session.outstanding.len() >= config.max_outstanding_per_client {
            return Err(Shed::ClientBusy);
        }
        if self.pending.len() >= config.max_outstanding {
            return Err(Shed::Overloaded);
        }
        session.outstanding.insert(request.client_seq);
        let key = (*client, request.client_seq);
        self.queued_bytes += request.encoded_len();
        self.queue.push_back(key);
        if self.batch_deadline.is_none() {
            self.batch_deadline = Some(now.saturating_add(config.batch_delay_ms));
        }
        let digest = request.digest(&config.chain_id);
        self.pending.insert(
            key,
            Pending {
                request,
                digest,
                accepted: now,
                deadline: None,
                retries: 0,
                votes: BTreeMap::new(),
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
        if pending.votes.contains_key(&reply.replica) {
            // A validator's first valid reply counts; a second would cost a check for nothing.
            return Ok(());
        }
        let chain = &self.config.chain_id;
        let root = reply_root(chain, &reply)?;
        check_root_signature(chain, &self.validators, &reply, &root, &mut self.replies)?;
        let says = (reply.seq, digest_of(b"pbft/v1/result", &reply.result));
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
        if agreeing < self.validators.reply_quorum() {
            return Ok(());
        }
        let Some(pending) = self.pending.remove(&key) else {
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
        // The primary is where f + 1 say it is: the lowest of their views, so one validator
        // signing a high view cannot send every batch to a primary of its choosing.
        let view = replies.iter().map(|reply| reply.view).min().unwrap_or(0);
        self.view = self.view.max(view);
        self.metrics.requests_answered += 1;
        self.outputs.push_back(GatewayOutput::Answered {
            client: reply.client,
            client_seq: reply.client_seq,
            seq: reply.seq,
            replies,
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
                if let Some(pending) = self.pending.remove(&key) {
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
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<GatewayOutput> {
        self.outputs.pop_front()
    }

    /// The validator new batches go to: the primary of the highest view a result came from.
    pub fn primary(&self) -> ReplicaId {
        self.validators.primary(self.view)
    }

    /// Client sessions open.
    pub fn sessions(&self) -> usize {
        self.open_sessions
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
                let len = pending.request.encoded_len();
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
        // Keys, requests and digests kept together, so each verdict meets its own key.
        let found: Vec<((PublicKey, u64), &Pending)> = keys
            .iter()
            .filter_map(|key| self.pending.get(key).map(|pending| (*key, pending)))
            .collect();
        let requests: Vec<&Request> = found.iter().map(|(_, p)| &p.request).collect();
        let leaves: Vec<Digest> = found.iter().map(|(_, p)| p.digest).collect();
        let keys: Vec<(PublicKey, u64)> = found.iter().map(|(key, _)| *key).collect();
        let (verdicts, checked) = check_request_signatures(&Pool::default(), &requests, &leaves);
        self.metrics.signatures_verified += checked.signatures;
        let primary = self.primary();
        let deadline = now.saturating_add(self.config.retransmit_ms);
        let mut sent = 0;
        let penalty = self.burst();
        for ((client, client_seq), verdict) in keys.into_iter().zip(verdicts) {
            let key = (client, client_seq);
            if verdict.is_err() {
                self.pending.remove(&key);
                if let Some(session) = self.sessions.get_mut(&client) {
                    session.outstanding.remove(&client_seq);
                    // A forgery costs the client a whole burst of requests.
                    session.tokens = session.tokens.saturating_sub(penalty);
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
            self.outputs
                .push_back(GatewayOutput::Transmit { to: primary, bytes });
            sent += 1;
        }
        if sent > 0 {
            self.metrics.batches_sent += 1;
            self.metrics.requests_sent += sent;
        }
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
    fn shed(&mut self, reason: Shed) -> Shed {
        *self.metrics.shed.entry(reason.label()).or_default() += 1;
        reason
    }
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
