//! Request intake: client requests from arrival to proposal (at the primary) or to commit
//! (watched at a backup), with the batch signature checks that admit them.
//!
//! The primary checks a request's signature only when it cuts a batch (unless it verified
//! that very signature before), in one batch check with the rest (and bisects a batch that fails to find the forged ones); a backup checks it
//! on arrival, holds it against a deadline and forwards it to the primary, so a primary that
//! censors it is replaced.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use super::exactly_once::Freshness;
use super::output::{Destination, Record};
use super::refusals::RefusalBudget;
use super::signature_cache::SignatureCache;
use super::signatures::{check_signatures, signed_digests};
use super::{Mode, Replica};
use crate::config::ChainId;
use crate::crypto::{CryptoError, Digest, Pool};
use crate::error::Error;
use crate::merkle;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::statement::{Batch, MAX_BATCH_EVIDENCE, Phase, PrePrepare, Request, Vote};

/// A client request a backup holds while it waits for the primary to order it.
#[derive(Debug)]
struct Watched {
    request: Request,
    /// When the backup gives up on the primary if the request has not committed (ms).
    deadline: u64,
}

/// Requests waiting to be proposed, proposed and not yet executed, and watched.
#[derive(Debug, Default)]
pub(super) struct Intake {
    /// At the primary: admitted requests not yet in a batch, oldest first, with their
    /// digests (computed once, on admission).
    pending: VecDeque<(Request, Digest)>,
    /// Request digests in a proposal of the log, or pending at the primary.
    in_flight: BTreeSet<Digest>,
    /// Requests clients sent to this backup, by digest: each must commit before its deadline.
    watched: BTreeMap<Digest, Watched>,
    /// Client signatures verified here, so that none is checked twice.
    signatures: SignatureCache,
    /// Where large batch signature checks run.
    pub(super) pool: Pool,
    /// What signed refusals this second may still cost.
    pub(super) refusals: RefusalBudget,
}

impl Intake {
    /// Whether a request with this digest is proposed or pending.
    pub(super) fn is_in_flight(&self, digest: &Digest) -> bool {
        self.in_flight.contains(digest)
    }

    /// Marks a digest in flight; false if it was already.
    pub(super) fn track(&mut self, digest: Digest) -> bool {
        self.in_flight.insert(digest)
    }

    /// Marks the digests of a batch in flight.
    pub(super) fn track_all(&mut self, digests: &[Digest]) {
        self.in_flight.extend(digests.iter().copied());
    }

    /// A request left the log (executed, or its proposal lost).
    pub(super) fn release(&mut self, digest: &Digest) {
        self.in_flight.remove(digest);
    }

    /// Forgets every digest in flight (a new view rebuilds them from its log).
    pub(super) fn clear_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// Keeps the pending requests for which `keep` holds, dropping the others.
    pub(super) fn retain_pending(&mut self, mut keep: impl FnMut(&Request) -> bool) {
        self.pending.retain(|(request, _)| keep(request));
    }

    /// Marks the pending requests in flight again, after [`Intake::clear_in_flight`] where
    /// they stay pending: a copy arriving later must be refused, or it would be queued twice.
    pub(super) fn track_pending(&mut self) {
        self.in_flight
            .extend(self.pending.iter().map(|(_, digest)| *digest));
    }

    /// Requests waiting for a batch.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Queues an admitted request, with its digest, for the next batch.
    pub(super) fn enqueue(&mut self, request: Request, digest: Digest) {
        self.pending.push_back((request, digest));
    }

    /// Puts a batch's requests (with their digests) back at the front, in their order.
    pub(super) fn requeue_front(&mut self, requests: Vec<(Request, Digest)>) {
        for pending in requests.into_iter().rev() {
            self.pending.push_front(pending);
        }
    }

    /// Takes the oldest pending requests that fit one batch: at most `max_ops`, and at most
    /// `max_bytes` of encoded requests unless a single one is larger.
    pub(super) fn cut(&mut self, max_ops: usize, max_bytes: usize) -> Vec<(Request, Digest)> {
        let mut requests = Vec::new();
        let mut bytes = 0;
        while let Some((request, _)) = self.pending.front() {
            let len = request.encoded_len();
            let full =
                requests.len() >= max_ops || (!requests.is_empty() && bytes + len > max_bytes);
            if full {
                break;
            }
            bytes += len;
            if let Some(request) = self.pending.pop_front() {
                requests.push(request);
            }
        }
        requests
    }

    /// Every pending request, oldest first, leaving none.
    pub(super) fn drain_pending(&mut self) -> Vec<Request> {
        self.pending.drain(..).map(|(request, _)| request).collect()
    }

    /// The request watched with this digest (its signature verified), if one is.
    pub(super) fn watched(&self, digest: &Digest) -> Option<&Request> {
        self.watched.get(digest).map(|watched| &watched.request)
    }

    /// Whether `request` (whose digest is `leaf`) was verified here already, with this very
    /// signature: it is watched (only a request whose signature verified is), or the
    /// [`SignatureCache`] remembers it. The reference design's signature cache: a backup
    /// checks a client's signature on arrival and not again inside a pre-prepare, nor a copy
    /// the client sends again after the pre-prepare or the execution.
    ///
    /// The cache holds what the signature covers (`signed`, [`Request::signed`]): the leaf
    /// for a client's signature, the attested root for a gateway's (so the requests a gateway
    /// attested together cost one check, and a copy whose path leads elsewhere misses). A
    /// malformed path (`None`) is never verified.
    pub(super) fn verified_before(
        &self,
        leaf: &Digest,
        signed: Option<&Digest>,
        request: &Request,
    ) -> bool {
        if self
            .watched
            .get(leaf)
            .is_some_and(|watched| watched.request.same_authentication(request))
        {
            return true;
        }
        signed.is_some_and(|signed| self.signatures.holds(signed, &request.signature))
    }

    /// Remembers that `request`'s signature over `signed` (what it covers) verified.
    pub(super) fn verified_now(&mut self, signed: Option<&Digest>, request: &Request) {
        if let Some(signed) = signed {
            self.signatures.insert(signed, &request.signature);
        }
    }

    /// Requests watched.
    pub(super) fn watched_len(&self) -> usize {
        self.watched.len()
    }

    /// Watches a request until `deadline` (ms), unless it is watched already. Only a request
    /// whose signature verified may be watched ([`Intake::verified_before`] relies on it).
    pub(super) fn watch(&mut self, digest: Digest, request: &Request, deadline: u64) {
        self.watched.entry(digest).or_insert_with(|| Watched {
            request: request.clone(),
            deadline,
        });
    }

    /// The request committed: nothing to watch.
    pub(super) fn unwatch(&mut self, digest: &Digest) {
        self.watched.remove(digest);
    }

    /// The earliest deadline of a watched request.
    pub(super) fn watch_deadline(&self) -> Option<u64> {
        self.watched.values().map(|w| w.deadline).min()
    }

    /// Keeps the watched requests for which `keep` holds.
    pub(super) fn retain_watched(&mut self, mut keep: impl FnMut(&Request) -> bool) {
        self.watched.retain(|_, watched| keep(&watched.request));
    }

    /// Gives every watched request a new `deadline` and returns copies of them, in digest
    /// order (a new view hands them to its primary).
    pub(super) fn rewatch(&mut self, deadline: u64) -> Vec<Request> {
        self.watched
            .values_mut()
            .map(|watched| {
                watched.deadline = deadline;
                watched.request.clone()
            })
            .collect()
    }

    /// Stops watching everything (this replica became the primary).
    pub(super) fn clear_watched(&mut self) {
        self.watched.clear();
    }

    /// Entries held: pending, in flight and watched.
    pub(super) fn footprint(&self) -> usize {
        self.pending.len() + self.in_flight.len() + self.watched.len()
    }

    /// The requests about to be proposed (with their digests, the batch's Merkle leaves)
    /// whose client signatures hold, in their order ([`check_signatures`]). The forged ones
    /// are dropped (no longer in flight) and counted.
    pub(super) fn verified(
        &mut self,
        metrics: &mut Metrics,
        chain: &ChainId,
        pending: Vec<(Request, Digest)>,
    ) -> (Vec<Request>, Vec<Digest>) {
        let (requests, leaves): (Vec<Request>, Vec<Digest>) = pending.into_iter().unzip();
        let signed = signed_digests(chain, &requests, &leaves);
        // Requests verified here before (proposed in an earlier view, say) are not checked.
        let cached: Vec<bool> = requests
            .iter()
            .zip(&leaves)
            .zip(&signed)
            .map(|((request, leaf), signed)| self.verified_before(leaf, signed.as_ref(), request))
            .collect();
        let (unchecked, unchecked_signed): (Vec<&Request>, Vec<Option<Digest>>) = requests
            .iter()
            .zip(&signed)
            .zip(&cached)
            .filter(|(_, cached)| !**cached)
            .map(|((request, signed), _)| (request, *signed))
            .unzip();
        metrics.signatures_cached += (requests.len() - unchecked.len()) as u64;
        let mut checked =
            check_signatures(metrics, &self.pool, &unchecked, &unchecked_signed).into_iter();
        // One verdict per unchecked request; a missing one would be a refusal, never a pass.
        let verdicts: Vec<Result<(), CryptoError>> = cached
            .iter()
            .map(|&cached| match cached {
                true => Ok(()),
                false => checked.next().unwrap_or(Err(CryptoError::BadSignature)),
            })
            .collect();
        let mut good = (Vec::new(), Vec::new());
        let each = requests.into_iter().zip(leaves).zip(signed);
        for (((request, leaf), signed), verdict) in each.zip(verdicts) {
            match verdict {
                Ok(()) => {
                    self.verified_now(signed.as_ref(), &request);
                    good.0.push(request);
                    good.1.push(leaf);
                }
                Err(err) => {
                    self.in_flight.remove(&leaf);
                    *metrics
                        .rejected
                        .entry(Error::Crypto(err).label())
                        .or_default() += 1;
                }
            }
        }
        good
    }
}

/// What admitting a request left to do once its signature is known to hold.
#[derive(Debug)]
pub(super) enum Admitted {
    /// The request was executed already: send its reply again.
    ReplyAgain(Option<Box<Message>>),
    /// Watch it at this backup, and forward it to the primary if `forward`.
    Watch { forward: bool },
}

impl Replica {
    /// A client request, from the host or a peer; `forward` if this copy may be forwarded to
    /// the primary (a validator's forwarded copy never is again, or two replicas in different
    /// views would bounce it forever).
    pub(super) fn on_request(&mut self, request: Request, forward: bool) -> Result<(), Error> {
        let digest = request.digest(&self.config.chain_id);
        match self.admit(request, digest, forward, 0)? {
            None => Ok(()),
            Some((request, next)) => {
                let chain = self.config.chain_id;
                let signed = request.signed(&chain, &digest).map(|(_, d)| d);
                if self
                    .intake
                    .verified_before(&digest, signed.as_ref(), &request)
                {
                    self.metrics.signatures_cached += 1;
                    return self.finish(request, digest, next);
                }
                let pool = &self.intake.pool;
                let verdicts = check_signatures(&mut self.metrics, pool, &[&request], &[signed]);
                verdicts.into_iter().try_for_each(|verdict| verdict)?;
                self.intake.verified_now(signed.as_ref(), &request);
                self.finish(request, digest, next)
            }
        }
    }

    /// Requests from the host's own clients, all arrived by `now`: as [`Replica::submit`]
    /// for each in order, except that the signatures a backup checks on arrival are checked
    /// in one batch (about half the cost per signature of checking each alone; a failing
    /// batch is bisected to find the forged ones, so a host should group requests by the
    /// connection they came on and bound each group: a forgery costs its whole group a
    /// search), and that a copy of a request already in the group is not checked again.
    ///
    /// # Errors
    ///
    /// One verdict per request, in order, as [`Replica::submit`] gives.
    pub fn submit_all(&mut self, now: u64, requests: Vec<Request>) -> Vec<Result<(), Error>> {
        self.enter(now);
        let chain = self.config.chain_id;
        let mut verdicts = Vec::with_capacity(requests.len());
        let mut waiting = Vec::new();
        // The first copy of each (digest, signature) waiting for its check, and the copies
        // after it, which get its verdict and cost nothing.
        let mut first = BTreeMap::new();
        let mut copies = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            let digest = request.digest(&chain);
            // Keyed by what the signature covers and the signature: a forged copy, or one
            // attested along another path, must not stand for a genuine one.
            let signed = request.signed(&chain, &digest).map(|(_, d)| d);
            let copy = (digest, signed, request.signature.0);
            if let Some(&of) = first.get(&copy) {
                verdicts.push(Ok(()));
                copies.push((index, of));
                continue;
            }
            // Requests this group will watch count against the bound before their checks.
            match self.admit(request, digest, true, waiting.len()) {
                Ok(None) => verdicts.push(Ok(())),
                Ok(Some((request, next)))
                    if self
                        .intake
                        .verified_before(&digest, signed.as_ref(), &request) =>
                {
                    // Copies later in the group get its verdict, as a checked one's do.
                    first.insert(copy, index);
                    self.metrics.signatures_cached += 1;
                    let verdict = self.finish(request, digest, next);
                    verdicts.push(verdict);
                }
                Ok(Some((request, next))) => {
                    verdicts.push(Ok(()));
                    first.insert(copy, index);
                    waiting.push((index, request, (digest, signed), next));
                }
                Err(err) => verdicts.push(Err(err)),
            }
        }
        let (checked, signed): (Vec<&Request>, Vec<Option<Digest>>) =
            waiting.iter().map(|(_, r, (_, s), _)| (r, *s)).unzip();
        let pool = &self.intake.pool;
        let checks = check_signatures(&mut self.metrics, pool, &checked, &signed);
        for ((index, request, (digest, signed), next), check) in waiting.into_iter().zip(checks) {
            if check.is_ok() {
                self.intake.verified_now(signed.as_ref(), &request);
            }
            let verdict = check
                .map_err(Error::Crypto)
                .and_then(|()| self.finish(request, digest, next));
            if let Some(slot) = verdicts.get_mut(index) {
                *slot = verdict;
            }
        }
        for (index, of) in copies {
            let verdict = verdicts.get(of).copied();
            if let (Some(verdict), Some(slot)) = (verdict, verdicts.get_mut(index)) {
                *slot = verdict;
            }
        }
        verdicts
            .into_iter()
            .map(|verdict| self.count(verdict))
            .collect()
    }

    /// The checks of a request that cost no signature check, and what they decide: done
    /// already (`None`), or what to do once its signature holds. `reserved` requests admitted
    /// with it and not yet watched count against the bound on watched requests.
    ///
    /// A client's own copy (`forward`) that is refused gets a signed answer saying why
    /// ([`Replica::refuse`]), within its budget.
    fn admit(
        &mut self,
        request: Request,
        digest: Digest,
        forward: bool,
        reserved: usize,
    ) -> Result<Option<(Request, Admitted)>, Error> {
        let id = (request.client, request.client_seq);
        let admitted = self.admit_unanswered(request, digest, forward, reserved);
        if let (true, Err(err)) = (forward, &admitted) {
            self.refuse(id, digest, err);
        }
        admitted
    }

    fn admit_unanswered(
        &mut self,
        request: Request,
        digest: Digest,
        forward: bool,
        reserved: usize,
    ) -> Result<Option<(Request, Admitted)>, Error> {
        if request.op.len() > self.config.max_request_bytes {
            return Err(Error::RequestTooLarge {
                len: request.op.len(),
                max: self.config.max_request_bytes,
            });
        }
        self.check_attestation(&request, self.validators.epoch())?;
        // An attested request's path adds to it: one that fits no batch would be proposed
        // alone and refused by every backup.
        if request.encoded_len() > self.config.max_batch_bytes {
            return Err(Error::RequestTooLarge {
                len: request.encoded_len(),
                max: self.config.max_batch_bytes,
            });
        }
        match self.clients.freshness(&request.client, request.client_seq) {
            Freshness::Fresh => {}
            // The reply again, to a request that proves it is the client's: an unsigned
            // repeat would let anyone make every replica re-send (or re-sign) a reply.
            // Another request executed under this number (a listed gateway may attest any
            // client's): this one never will, and the other's reply is not its answer.
            Freshness::LastExecuted(_)
                if self.clients.executed_request(&request.client) != Some(digest) =>
            {
                return Err(Error::NumberTaken);
            }
            Freshness::LastExecuted(reply) => {
                let reply = reply.map(|reply| Box::new(Message::Reply(reply.clone())));
                return Ok(Some((request, Admitted::ReplyAgain(reply))));
            }
            Freshness::Stale => return Err(Error::StaleRequest),
        }
        let leads = self.is_primary() && self.mode == Mode::Normal;
        // Cheap checks first: a duplicate costs no signature verification.
        if leads && self.intake.is_in_flight(&digest) {
            return Err(Error::DuplicateRequest);
        }
        if leads && self.intake.pending_len() >= self.config.max_pending_requests {
            return Err(Error::Overloaded);
        }
        if !leads && let Some(watched) = self.intake.watched(&digest) {
            // The client asks again: the primary may have lost it. The watched copy goes, one
            // forward per copy received, to the primary only: nothing to amplify. A copy with
            // other signature bytes was not checked (a forgery, or a client that signs afresh
            // each time; RFC 8032 signing is deterministic): refused, and never relayed.
            let same = watched.same_authentication(&request);
            if forward && self.mode == Mode::Normal {
                let watched = watched.clone();
                self.forward_to_primary(watched);
            }
            return if same {
                Ok(None)
            } else {
                Err(Error::DuplicateRequest)
            };
        }
        if !leads && self.intake.watched_len() + reserved >= self.config.max_pending_requests {
            return Err(Error::Overloaded);
        }
        if leads {
            // The signature is checked when the request is proposed, in one batch with the
            // rest of its batch (a third of the cost of checking each alone).
            match &request.attestation {
                None => request.client.check()?,
                Some(attestation) => attestation.gateway.check()?,
            }
            self.intake.track(digest);
            self.intake.enqueue(request, digest);
            self.propose(false);
            return Ok(None);
        }
        Ok(Some((request, Admitted::Watch { forward })))
    }

    /// Does what [`Replica::admit`] left for after the signature check.
    fn finish(&mut self, request: Request, digest: Digest, next: Admitted) -> Result<(), Error> {
        match next {
            Admitted::ReplyAgain(Some(reply)) => {
                self.tell_epoch(request.client, true);
                self.send(Destination::Client(request.client), reply.encode());
                Ok(())
            }
            Admitted::ReplyAgain(None) => self.reply_again(&request),
            Admitted::Watch { forward } => {
                // A backup (or a primary still waiting for its new view) holds the request
                // against a deadline: if it does not commit in time, the primary is replaced.
                // This catches a primary that censors some clients, and one that proposed the
                // request but cannot get it committed. It is held even if a proposal here
                // already carries it: should that proposal die in a view change, the new
                // primary gets the request from here.
                let deadline = self.timers.timeout_from_now();
                self.intake.watch(digest, &request, deadline);
                if forward && self.mode == Mode::Normal {
                    self.forward_to_primary(request);
                }
                Ok(())
            }
        }
    }

    /// Checks a proposed batch before any signature: its limits, that its requests hash to
    /// the digest `vote` signs, and that none is in it twice or already in flight here (an
    /// honest primary proposes a request once). Returns its leaves.
    ///
    /// # Errors
    ///
    /// [`Replica::check_batch_limits`]'s, [`Error::BatchDigestMismatch`] and
    /// [`Error::DuplicateRequest`].
    pub(super) fn check_proposed_batch(
        &self,
        vote: &Vote,
        batch: &Batch,
    ) -> Result<Vec<Digest>, Error> {
        self.check_batch_limits(batch)?;
        let leaves = batch.leaves(&self.config.chain_id);
        if merkle::root(&leaves) != vote.digest {
            return Err(Error::BatchDigestMismatch);
        }
        let mut unique = BTreeSet::new();
        if leaves
            .iter()
            .any(|leaf| !unique.insert(*leaf) || self.intake.is_in_flight(leaf))
        {
            return Err(Error::DuplicateRequest);
        }
        Ok(leaves)
    }

    /// Checks a proposed batch against the config's limits before anything hashes it.
    ///
    /// # Errors
    ///
    /// [`Error::BatchTooLarge`] for an empty batch or one over `max_batch_ops`,
    /// `max_batch_bytes` or [`MAX_BATCH_EVIDENCE`]; [`Error::RequestTooLarge`] for an op
    /// over `max_request_bytes`.
    pub(super) fn check_batch_limits(&self, batch: &Batch) -> Result<(), Error> {
        self.check_batch_limits_in(batch, self.validators.epoch())
    }

    /// [`Replica::check_batch_limits`] for a batch of `epoch` (a committed one served to a
    /// replica behind its boundary): its attestations name that epoch's gateways.
    pub(super) fn check_batch_limits_in(&self, batch: &Batch, epoch: u64) -> Result<(), Error> {
        // An empty batch fills a seq up to a scheduled boundary, and nothing else.
        let empty_allowed = self.epochs.schedule.is_some();
        let requests = &batch.requests;
        requests
            .iter()
            .try_for_each(|request| self.check_attestation(request, epoch))?;
        let bytes: usize = requests.iter().map(Request::encoded_len).sum();
        if (batch.is_empty() && !empty_allowed)
            || batch.evidence.len() > MAX_BATCH_EVIDENCE
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
        Ok(())
    }

    /// Checks, before any signature, that an attested request names a gateway of `epoch`
    /// ([`Replica::attesting_gateways`] for this one), with a path no longer than a tree of `u32`
    /// leaves has (32 hashes), so that nothing else costs this replica a check.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownGateway`] for any other key, or for every attested request in end to
    /// end mode; [`Error::BadAttestation`] for a path too long.
    pub(super) fn check_attestation(&self, request: &Request, epoch: u64) -> Result<(), Error> {
        let Some(attestation) = &request.attestation else {
            return Ok(());
        };
        let listed = self.gateways_of_epoch(epoch).contains(&attestation.gateway);
        if !listed && !planted!(self.config, AcceptUnlistedGateway) {
            return Err(Error::UnknownGateway);
        }
        if attestation.proof.path.len() > 32 {
            return Err(Error::BadAttestation);
        }
        Ok(())
    }

    /// Sends a client's request to the current view's primary.
    pub(super) fn forward_to_primary(&mut self, request: Request) {
        let primary = self.validators.primary(self.view);
        self.send(
            Destination::Validator(primary),
            Message::Request(request).encode(),
        );
    }

    /// Cuts batches from the pending requests, with the pending evidence, while the window
    /// has room. Without `force` (the delay has not run out) only full batches go, unless
    /// nothing is in flight. Arms the batch timer for what is left, or disarms it when
    /// nothing can be proposed.
    pub(super) fn propose(&mut self, force: bool) {
        // A primary that withholds its signatures (rollback protection) proposes nothing:
        // each seq it skipped would cost the view a gap.
        let withholds = self.signer.withholds(Phase::PrePrepare, self.view);
        if self.mode != Mode::Normal || !self.is_primary() || withholds {
            self.timers.set_batch(false);
            return;
        }
        while self.next_seq <= self.high() {
            let evidence = self.evidence_to_propose();
            // Up to a scheduled boundary every seq is filled, with an empty batch if need be.
            let pad = self.must_pad();
            if self.intake.pending_len() == 0 && evidence.is_empty() && !pad {
                break;
            }
            let idle = self.next_seq == self.low + 1;
            if !force && !idle && !pad && self.intake.pending_len() < self.config.max_batch_ops {
                break;
            }
            let requests = self
                .intake
                .cut(self.config.max_batch_ops, self.config.max_batch_bytes);
            let chain = self.config.chain_id;
            let (requests, mut leaves) = self.intake.verified(&mut self.metrics, &chain, requests);
            if requests.is_empty() && evidence.is_empty() && !pad {
                continue;
            }
            let batch = Batch { requests, evidence };
            leaves.extend(batch.evidence.iter().map(|e| e.digest(&chain)));
            let digest = merkle::root(&leaves);
            let seq = self.next_seq;
            self.next_seq += 1;
            let Some(vote) = self.sign_vote(Phase::PrePrepare, seq, digest) else {
                // This seq was proposed before a restart with another batch: skip it (the
                // view change will fill it) and keep the requests for the next one (the
                // evidence stays pending in its pool).
                let requests = batch.requests.into_iter().zip(leaves).collect();
                self.intake.requeue_front(requests);
                continue;
            };
            self.intake
                .track_all(leaves.get(batch.requests.len()..).unwrap_or_default());
            let slot = self.log.entry(seq).or_default();
            slot.digest = Some(digest);
            slot.proposal = Some(vote.clone());
            slot.leaves = leaves;
            slot.batch_logged = true;
            let record = Record::Accepted(vote.clone(), batch.clone());
            let message = Message::PrePrepare(PrePrepare { vote, batch });
            self.publish(record, &message);
            // The batch moved into the message for encoding, and moves back, uncopied.
            if let (Message::PrePrepare(PrePrepare { batch, .. }), Some(slot)) =
                (message, self.log.get_mut(&seq))
            {
                slot.batch = Some(batch);
            }
            self.timers.start_waiting();
            self.advance(seq);
        }
        let waiting = self.has_proposable();
        self.timers
            .set_batch(waiting && self.next_seq <= self.high());
    }
}

#[cfg(test)]
mod tests;
