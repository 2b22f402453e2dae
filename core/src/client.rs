//! The client role: signs requests, and accepts a result once f + 1 validators signed the
//! same one, so at least one honest validator vouches for it.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use crate::certificate::CertificateError;
use crate::config::{ChainId, ReplicaId, ValidatorSet};
use crate::crypto::{Digest, Keypair, PublicKey, Signature, digest_of};
use crate::envelope::DecodeError;
use crate::merkle::{self, InclusionProof};
use crate::message::Message;
use crate::refusal::{RefusalReason, RequestRefusal};
use crate::statement::{Reply, Request, reply_root_digest};

/// A result the client can rely on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The request's number.
    pub client_seq: u64,
    /// The sequence number whose batch held the request.
    pub seq: u64,
    /// The view it committed in.
    pub view: u64,
    /// The application's result.
    pub result: Vec<u8>,
}

/// Why a reply was not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The bytes are not a message.
    #[error("undecodable reply: {0}")]
    Decode(DecodeError),
    /// A message, but not a reply.
    #[error("message is not a reply")]
    NotAReply,
    /// The reply is for another client or another request than the outstanding one.
    #[error("reply is not for the outstanding request")]
    NotOutstanding,
    /// The reply answers another request under the outstanding one's client and number (a
    /// gateway attested another operation in its place): not this request's result.
    #[error("reply answers another request under this client's number")]
    AnotherRequest,
    /// The signer is not a validator.
    #[error("reply from {0}, not a validator")]
    UnknownReplica(ReplicaId),
    /// The Merkle path or the signature does not verify.
    #[error("reply signature does not verify")]
    BadSignature,
    /// The reply names another signer than the validator whose connection it came on.
    #[error("reply signed as {claimed} came from validator {from}")]
    NotFromSigner {
        /// The signer the reply names.
        claimed: ReplicaId,
        /// The validator that sent it.
        from: ReplicaId,
    },
    /// A validator handed over an epoch change that does not verify.
    #[error("epoch change: {0}")]
    EpochChange(CertificateError),
}

/// Largest reply a client decodes by default: a result and its Merkle path. 4 MiB, the same
/// bound as a replica's largest message.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 4 << 20;

struct Outstanding {
    request: Request,
    /// Its digest, which a reply must name.
    digest: Digest,
    /// The first valid reply of each validator: (seq, result digest). The view is left out:
    /// replicas may have committed the same batch in different views.
    replies: BTreeMap<ReplicaId, (u64, Digest)>,
    /// The first valid reply's inclusion in its batch's reply tree, so that a matching reply
    /// of another validator costs no hashing: the same result and path lead to the same root.
    proved: Option<Proved>,
    /// Each validator's latest valid refusal of the request.
    refusals: BTreeMap<ReplicaId, RefusalReason>,
}

/// What f + 1 validators answered to the outstanding request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It executed, with this result.
    Executed(Outcome),
    /// They will not order it ([`crate::RequestRefusal`]). The request stays outstanding: a
    /// retransmission may still be answered (an overloaded validator may take it later).
    Refused(Refused),
}

/// A request f + 1 validators refused for the same reason: at least one of them is honest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The refused request's number.
    pub client_seq: u64,
    /// Why. For [`RefusalReason::Stale`], `last` is the highest number f + 1 of the refusers
    /// hold spent, so at least one honest validator does: numbering above it is needed, and a
    /// Byzantine refuser cannot push the client's numbers higher than honest ones do.
    pub reason: RefusalReason,
}

/// A result and Merkle path whose root was computed, with that root and the result's digest.
#[derive(Debug)]
struct Proved {
    result: Vec<u8>,
    proof: InclusionProof,
    root: Digest,
    result_digest: Digest,
}

/// How long a client waits for f + 1 replies before it broadcasts its request to every
/// validator, in ms: half the default view timeout, so a lost request or a silent primary
/// costs little more than the backups' own timeout. Each retry doubles it, up to 8×.
pub const DEFAULT_RETRANSMIT_MS: u64 = 250;

/// A client: one outstanding request at a time (closed loop), numbered in increasing order.
///
/// Sans-IO like the replica: send a new request to [`Client::primary`]; when
/// [`Client::poll_timeout`] passes, [`Client::handle_timeout`] returns the request to send to
/// every validator.
pub struct Client {
    chain: ChainId,
    keypair: Keypair,
    validators: ValidatorSet,
    next_seq: u64,
    outstanding: Option<Outstanding>,
    max_message_bytes: usize,
    retransmit_ms: u64,
    /// When to retransmit the outstanding request, and how many times it was.
    deadline: Option<u64>,
    retries: u32,
    /// The highest view a result was accepted in: where the primary is.
    view: u64,
    /// Requests go unsigned, for a gateway to attest ([`Client::unsigned`]).
    unsigned: bool,
}

impl Client {
    /// A client whose first request is numbered `first_seq`.
    ///
    /// Numbers must grow across restarts: a host should start from the time in
    /// microseconds, which also keeps them above the replicas' exactly-once floor.
    pub fn new(chain: ChainId, keypair: Keypair, validators: ValidatorSet, first_seq: u64) -> Self {
        Client {
            chain,
            keypair,
            validators,
            next_seq: first_seq.max(1),
            outstanding: None,
            max_message_bytes: DEFAULT_MAX_REPLY_BYTES,
            retransmit_ms: DEFAULT_RETRANSMIT_MS,
            deadline: None,
            retries: 0,
            view: 0,
            unsigned: false,
        }
    }

    /// Gateway-attested mode: requests go unsigned (their signature all zero bytes), since
    /// the gateway the client connects to attests them; the client's key is proved by the
    /// transport's handshake instead. Saves the client a signature per request; validators
    /// refuse such a request sent to them directly.
    #[must_use]
    pub fn unsigned(mut self) -> Self {
        self.unsigned = true;
        self
    }

    /// Changes the first retransmission delay (see [`DEFAULT_RETRANSMIT_MS`]).
    pub fn with_retransmit_ms(mut self, ms: u64) -> Self {
        self.retransmit_ms = ms.max(1);
        self
    }

    /// Follows the validator set into the epoch `change` starts ([`crate::EpochChange`], as
    /// a validator hands it out): checks it with the current set, then checks replies with
    /// the new one. Replies counted so far for the outstanding request are dropped (ids are
    /// positions in a set, and the set changed); its retransmission gathers them again.
    ///
    /// # Errors
    ///
    /// [`CertificateError`] from [`crate::verify_epoch_change`]: a change of another epoch,
    /// or one that does not verify. Nothing changes then.
    pub fn enter_epoch(&mut self, change: &crate::EpochChange) -> Result<(), CertificateError> {
        self.validators = crate::verify_epoch_change(&self.chain, &self.validators, change)?;
        self.view = 0;
        if let Some(outstanding) = &mut self.outstanding {
            outstanding.replies.clear();
            outstanding.proved = None;
            outstanding.refusals.clear();
        }
        Ok(())
    }

    /// The validator set this client checks replies with; ids are positions in it.
    pub fn validators(&self) -> &ValidatorSet {
        &self.validators
    }

    /// The validator to send a new request to: the primary of the latest view a result came
    /// from (a hint; the broadcast after a timeout reaches the real one).
    pub fn primary(&self) -> ReplicaId {
        self.validators.primary(self.view)
    }

    /// When (ms) the outstanding request should be retransmitted, if one is outstanding.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadline
    }

    /// Time passed: returns the outstanding request to broadcast to every validator if its
    /// replies are late, and backs off the next retransmission.
    pub fn handle_timeout(&mut self, now: u64) -> Option<Request> {
        let deadline = self.deadline?;
        if deadline > now {
            return None;
        }
        self.retries = self.retries.saturating_add(1);
        let factor = 1u64 << self.retries.min(3);
        self.deadline = Some(now.saturating_add(self.retransmit_ms.saturating_mul(factor)));
        self.outstanding.as_ref().map(|o| o.request.clone())
    }

    /// Changes the largest reply this client decodes (results of the application may be large).
    pub fn with_max_reply_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// The network this client signs for.
    pub fn chain(&self) -> ChainId {
        self.chain
    }

    /// The number the next request signed takes: what governors approving a
    /// [`crate::Reconfiguration`] this client carries sign ([`crate::approval_digest`]).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers the next request at least `seq` (numbers only grow): a client that kept its
    /// last number durably resumes above it whatever its clock says.
    pub fn number_from(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// The client's key, which replies are addressed to.
    pub fn public_key(&self) -> PublicKey {
        self.keypair.public_key()
    }

    /// Signs the next request at time `now`; it becomes the outstanding one (replacing any
    /// other). Send it to [`Client::primary`].
    pub fn request(&mut self, now: u64, op: Vec<u8>) -> Request {
        let request = self.sign(op);
        self.track(now, request.clone());
        request
    }

    /// Signs the next request without sending it (unless [`Client::unsigned`]): a load
    /// generator signs ahead, then hands each to [`Client::track`] in the order signed.
    pub fn sign(&mut self, op: Vec<u8>) -> Request {
        let request = match self.unsigned {
            false => Request::new(&self.chain, &self.keypair, self.next_seq, op),
            true => Request {
                client: self.keypair.public_key(),
                client_seq: self.next_seq,
                op,
                signature: crate::crypto::Signature([0; 64]),
                attestation: None,
            },
        };
        self.next_seq += 1;
        request
    }

    /// Makes a request from [`Client::sign`] the outstanding one (replacing any other), sent
    /// at `now`.
    pub fn track(&mut self, now: u64, request: Request) {
        self.deadline = Some(now.saturating_add(self.retransmit_ms));
        self.retries = 0;
        self.outstanding = Some(Outstanding {
            digest: request.digest(&self.chain),
            request,
            replies: BTreeMap::new(),
            proved: None,
            refusals: BTreeMap::new(),
        });
    }

    /// After f + 1 validators refused the outstanding request as stale
    /// ([`RefusalReason::Stale`]): numbers the client's requests above `last` from here on,
    /// and signs the outstanding operation again under the next number, at `now`; returns it
    /// to send. `None` if nothing is outstanding.
    pub fn renumber_above(&mut self, now: u64, last: u64) -> Option<Request> {
        let op = self.outstanding.take()?.request.op;
        self.next_seq = self.next_seq.max(last.saturating_add(1));
        Some(self.request(now, op))
    }

    /// The request awaiting replies, to retransmit.
    pub fn outstanding(&self) -> Option<&Request> {
        self.outstanding.as_ref().map(|o| &o.request)
    }

    /// Counts a reply; returns the outcome once f + 1 validators agree on it. Refusals are
    /// counted too, but only [`Client::handle_message`] reports them.
    pub fn handle_reply(&mut self, bytes: &[u8]) -> Result<Option<Outcome>, ClientError> {
        self.handle_reply_cached(bytes, &mut ReplyCache::new(0))
    }

    /// [`Client::handle_reply`] with a cache of reply signatures already checked, shared by
    /// the clients behind one gateway: a validator signs one root per batch, so the replies
    /// of a batch's requests cost one signature check per validator, not one each.
    pub fn handle_reply_cached(
        &mut self,
        bytes: &[u8],
        cache: &mut ReplyCache,
    ) -> Result<Option<Outcome>, ClientError> {
        match self.handle_message_cached(bytes, cache)? {
            Some(Answer::Executed(outcome)) => Ok(Some(outcome)),
            Some(Answer::Refused(_)) | None => Ok(None),
        }
    }

    /// Counts a reply or a refusal of the outstanding request; returns the answer once f + 1
    /// validators agree on it: its result, or why they will not order it.
    pub fn handle_message(&mut self, bytes: &[u8]) -> Result<Option<Answer>, ClientError> {
        self.handle_message_cached(bytes, &mut ReplyCache::new(0))
    }

    /// [`Client::handle_message`] with a [`ReplyCache`] (see [`Client::handle_reply_cached`]).
    pub fn handle_message_cached(
        &mut self,
        bytes: &[u8],
        cache: &mut ReplyCache,
    ) -> Result<Option<Answer>, ClientError> {
        let reply =
            match Message::decode(bytes, self.max_message_bytes).map_err(ClientError::Decode)? {
                Message::Reply(reply) => reply,
                Message::Refusal(refusal) => return self.handle_refusal(&refusal),
                // A validator (or gateway) hands over the change that ended this client's
                // epoch, once per epoch; one of an epoch passed is a repeat.
                Message::EpochChange(change) => {
                    if change.state.epoch == self.validators.epoch() {
                        self.enter_epoch(&change)
                            .map_err(ClientError::EpochChange)?;
                    }
                    return Ok(None);
                }
                _ => return Err(ClientError::NotAReply),
            };
        self.count_reply(reply, cache)
            .map(|outcome| outcome.map(Answer::Executed))
    }

    /// Counts one validator's refusal of the outstanding request (its latest replaces its
    /// earlier one); the refusal once f + 1 agree ([`RefusalReason::agrees_with`]).
    fn handle_refusal(&mut self, refusal: &RequestRefusal) -> Result<Option<Answer>, ClientError> {
        let outstanding = self
            .outstanding
            .as_mut()
            .ok_or(ClientError::NotOutstanding)?;
        if refusal.client != outstanding.request.client
            || refusal.client_seq != outstanding.request.client_seq
        {
            return Err(ClientError::NotOutstanding);
        }
        if refusal.request != outstanding.digest {
            return Err(ClientError::AnotherRequest);
        }
        let key = self
            .validators
            .key(refusal.replica)
            .ok_or(ClientError::UnknownReplica(refusal.replica))?;
        let signed = refusal.signed_digest(&self.chain, self.validators.epoch());
        key.verify(&signed, &refusal.signature)
            .map_err(|_| ClientError::BadSignature)?;
        outstanding.refusals.insert(refusal.replica, refusal.reason);
        let needed = self.validators.reply_quorum();
        let agreeing: Vec<&RefusalReason> = outstanding
            .refusals
            .values()
            .filter(|reason| reason.agrees_with(&refusal.reason))
            .collect();
        if agreeing.len() < needed {
            return Ok(None);
        }
        let reason = match refusal.reason {
            // The highest `last` that f + 1 refusers hold spent.
            RefusalReason::Stale { .. } => {
                let mut lasts: Vec<u64> = agreeing
                    .iter()
                    .filter_map(|reason| match reason {
                        RefusalReason::Stale { last } => Some(*last),
                        _ => None,
                    })
                    .collect();
                lasts.sort_unstable_by(|a, b| b.cmp(a));
                let last = lasts
                    .get(needed.saturating_sub(1))
                    .copied()
                    .unwrap_or_default();
                RefusalReason::Stale { last }
            }
            other => other,
        };
        Ok(Some(Answer::Refused(Refused {
            client_seq: refusal.client_seq,
            reason,
        })))
    }

    /// Counts a reply of the outstanding request; the outcome once f + 1 agree.
    fn count_reply(
        &mut self,
        reply: Reply,
        cache: &mut ReplyCache,
    ) -> Result<Option<Outcome>, ClientError> {
        let outstanding = self
            .outstanding
            .as_mut()
            .ok_or(ClientError::NotOutstanding)?;
        if reply.client != outstanding.request.client
            || reply.client_seq != outstanding.request.client_seq
        {
            return Err(ClientError::NotOutstanding);
        }
        if reply.request != outstanding.digest {
            return Err(ClientError::AnotherRequest);
        }
        // Another validator's reply with the same result and path: its root is known.
        let known = outstanding
            .proved
            .as_ref()
            .filter(|p| p.result == reply.result && p.proof == reply.proof)
            .map(|p| (p.root, p.result_digest));
        let (root, result_digest) = match known {
            Some(known) => known,
            None => (
                reply_root(&self.chain, &reply)?,
                digest_of(b"pbft/v1/result", &reply.result),
            ),
        };
        check_root_signature(&self.chain, &self.validators, &reply, &root, cache)?;
        if outstanding.proved.is_none() {
            outstanding.proved = Some(Proved {
                result: reply.result.clone(),
                proof: reply.proof.clone(),
                root,
                result_digest,
            });
        }
        let vote = (reply.seq, result_digest);
        outstanding.replies.entry(reply.replica).or_insert(vote);
        let agreeing = outstanding.replies.values().filter(|v| **v == vote).count();
        if agreeing < self.validators.reply_quorum() {
            return Ok(None);
        }
        self.outstanding = None;
        self.deadline = None;
        self.view = self.view.max(reply.view);
        Ok(Some(Outcome {
            client_seq: reply.client_seq,
            seq: reply.seq,
            view: reply.view,
            result: reply.result,
        }))
    }
}

/// Checks one reply's Merkle path and its validator's signature.
pub fn verify_reply(
    chain: &ChainId,
    validators: &ValidatorSet,
    reply: &Reply,
) -> Result<(), ClientError> {
    verify_reply_cached(chain, validators, reply, &mut ReplyCache::new(0))
}

/// Statements (validator, signed reply root) whose signature was checked, with that
/// signature: once a validator is known to have signed a root, a reply whose Merkle path
/// leads to that root and that carries the same signature bytes is its reply, at the cost of
/// a comparison. A reply with other bytes is checked (a copy with a forged signature must not
/// pass for the validator's, or a gateway would forward it to clients that refuse it).
///
/// Each validator has its own `capacity` statements, its oldest out first, so one validator
/// signing many roots cannot push the others' out.
#[derive(Debug, Default)]
pub struct ReplyCache {
    capacity: usize,
    known: BTreeMap<(ReplicaId, Digest), Signature>,
    order: BTreeMap<ReplicaId, VecDeque<Digest>>,
}

impl ReplyCache {
    /// A cache of at most `capacity` statements per validator (0 caches nothing).
    pub fn new(capacity: usize) -> Self {
        ReplyCache {
            capacity,
            known: BTreeMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Whether `replica` is known to have made `signature` over `signed`.
    fn holds(&self, replica: ReplicaId, signed: &Digest, signature: &Signature) -> bool {
        self.known.get(&(replica, *signed)) == Some(signature)
    }

    fn insert(&mut self, replica: ReplicaId, signed: Digest, signature: Signature) {
        if self.capacity == 0 || self.known.insert((replica, signed), signature).is_some() {
            return;
        }
        let order = self.order.entry(replica).or_default();
        order.push_back(signed);
        if order.len() > self.capacity
            && let Some(oldest) = order.pop_front()
        {
            self.known.remove(&(replica, oldest));
        }
    }
}

/// [`verify_reply`], skipping the signature check of a statement in `cache` and adding the
/// ones it checks.
pub fn verify_reply_cached(
    chain: &ChainId,
    validators: &ValidatorSet,
    reply: &Reply,
    cache: &mut ReplyCache,
) -> Result<(), ClientError> {
    let root = reply_root(chain, reply)?;
    check_root_signature(chain, validators, reply, &root, cache)
}

/// The root of the reply tree `reply`'s Merkle path leads to from its leaf.
pub(crate) fn reply_root(chain: &ChainId, reply: &Reply) -> Result<Digest, ClientError> {
    merkle::root_from_proof(&reply.leaf(chain), &reply.proof).ok_or(ClientError::BadSignature)
}

/// Checks that `reply`'s validator signed `root` for its view and seq, unless `cache` holds
/// that statement; adds it to `cache` once checked.
pub(crate) fn check_root_signature(
    chain: &ChainId,
    validators: &ValidatorSet,
    reply: &Reply,
    root: &Digest,
    cache: &mut ReplyCache,
) -> Result<(), ClientError> {
    let key = validators
        .key(reply.replica)
        .ok_or(ClientError::UnknownReplica(reply.replica))?;
    let signed = reply_root_digest(chain, validators.epoch(), reply.view, reply.seq, root);
    if cache.holds(reply.replica, &signed, &reply.signature) {
        return Ok(());
    }
    key.verify(&signed, &reply.signature)
        .map_err(|_| ClientError::BadSignature)?;
    cache.insert(reply.replica, signed, reply.signature);
    Ok(())
}
