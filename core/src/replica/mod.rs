//! The validator: a sans-IO PBFT state machine (Castro and Liskov, OSDI 1999 and TOCS 2002).
//!
//! Feed it inputs, drain [`Replica::poll_output`] after each call and obey the order of
//! what comes out. It never reads a clock, does I/O or draws randomness.
//!
//! `Replica` holds its components and ties them together, as str0m's `Rtc` does: the
//! [`outbox`] (outputs in their durability order), the [`signer`] (never signs twice), the
//! [`timers`], request [`intake`] and [`checkpoints`]. This module keeps the entry points, the
//! dispatch of messages and the three phases; the rest live in their own files.

mod budget;
mod checkpoints;
mod compaction;
mod epoch;
mod evidence;
mod exactly_once;
mod execute;
mod governance;
mod held_batches;
mod inspect;
mod intake;
mod membership;
mod outbox;
mod output;
mod recovery;
mod refusals;
mod restore;
mod retransmit;
mod signature_cache;
pub(crate) mod signatures;
mod signer;
mod slot;
mod timers;
mod transfer;
mod view_change;
mod window;

pub use exactly_once::ClientRecord;
pub use governance::JoinError;
pub use output::{Delivery, Destination, Install, Output, Record};
pub use recovery::{Fence, RecoveryReport};
pub use restore::{CheckpointState, ExecutedState};

use alloc::collections::{BTreeMap, VecDeque};

use crate::certificate::{CommitPath, Committed};
use crate::config::{Config, ConfigError, ReplicaId, ValidatorSet};
use crate::crypto::{Keypair, PublicKey};
use crate::error::Error;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::new_view::NewView;
use crate::statement::{Batch, Phase, PrePrepare, Request, Vote};
use budget::CheckBudget;
use checkpoints::Checkpoints;
use exactly_once::ClientTable;
use intake::Intake;
use outbox::Outbox;
use signer::Signer;
use slot::{Slot, VoteOutcome};
use timers::Timers;
use view_change::HeldViewChange;

/// Whether the replica runs its view or waits for the view's `NewView`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Sent a view change for `view`; `since` is when the change began (the first view
    /// change of a run of failed views), in ms.
    ViewChange {
        since: u64,
    },
}

/// A validator replica.
pub struct Replica {
    config: Config,
    validators: ValidatorSet,
    id: ReplicaId,
    view: u64,
    mode: Mode,
    /// The low watermark: the window is (low, low + window]; slots at or below are freed.
    /// It is the stable checkpoint, or the executed seq while catching up to one.
    low: u64,
    /// The highest seq the host executed.
    executed: u64,
    /// The highest seq handed to the host.
    last_delivered: u64,
    /// The primary's next seq to propose.
    next_seq: u64,
    log: BTreeMap<u64, Slot>,
    /// Committed batches below the window, oldest first, to serve peers that are behind.
    archive: VecDeque<Committed>,
    /// The exactly-once table.
    clients: ClientTable,
    /// Messages from each peer for seqs above the window, replayed when it moves.
    ahead: BTreeMap<PublicKey, VecDeque<Message>>,
    /// Each validator's latest view change whose own signature verified.
    view_changes: BTreeMap<ReplicaId, HeldViewChange>,
    /// Each peer's share of signature checks on view-change traffic.
    budget: CheckBudget,
    /// The new view that started the current view, for peers still behind.
    new_view: Option<NewView>,
    /// The state this replica is fetching, when it is too far behind to replay.
    transfer: Option<transfer::Transfer>,
    /// As a new primary: the re-proposed batches it lacks and has fetched.
    batch_fetch: Option<held_batches::BatchFetch>,
    /// seq → the batch of this replica's latest vote of the prepare phase there, with the
    /// pre-prepare it accepted, once the log let go of it (see [`held_batches`]).
    kept: BTreeMap<u64, (Vote, Batch)>,
    /// State chunks served to each peer in the current retransmit interval.
    chunks_served: BTreeMap<ReplicaId, (u64, u32)>,
    outbox: Outbox,
    signer: Signer,
    timers: Timers,
    intake: Intake,
    checkpoints: Checkpoints,
    /// Evidence found or received, until a batch commits it.
    evidence: evidence::EvidencePool,
    /// Where this replica stands in the chain of epochs ([`epoch`]).
    epochs: epoch::Epochs,
    /// Rollback protection at start ([`recovery`]).
    recovery: recovery::Recovery,
    metrics: Metrics,
}

impl Replica {
    /// A validator with `keypair`, which must be in `validators`, starting from genesis.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: the config fails [`Config::validate_for`] the set (its limits, or a
    /// set too large for its largest message), or the key is not in the set.
    pub fn new(
        config: Config,
        validators: ValidatorSet,
        keypair: Keypair,
    ) -> Result<Self, ConfigError> {
        config.validate_for(&validators)?;
        let id = validators
            .id_of(&keypair.public_key())
            .ok_or(ConfigError::Invalid(
                "this replica's key is not in the validator set",
            ))?;
        Ok(Replica {
            clients: ClientTable::new(config.max_clients),
            outbox: Outbox::new(validators.len()),
            signer: Signer::new(keypair, id, config.chain_id, validators.epoch()),
            timers: Timers::new(&config),
            budget: CheckBudget::new(config.view_change_checks_per_sec),
            intake: Intake::default(),
            checkpoints: Checkpoints::default(),
            evidence: evidence::EvidencePool::default(),
            epochs: epoch::Epochs::default(),
            recovery: recovery::Recovery::default(),
            config,
            validators,
            id,
            view: 0,
            mode: Mode::Normal,
            low: 0,
            executed: 0,
            last_delivered: 0,
            next_seq: 1,
            log: BTreeMap::new(),
            archive: VecDeque::new(),
            ahead: BTreeMap::new(),
            metrics: Metrics::default(),
            view_changes: BTreeMap::new(),
            new_view: None,
            transfer: None,
            batch_fetch: None,
            kept: BTreeMap::new(),
            chunks_served: BTreeMap::new(),
        })
    }

    /// The next output, in the order the host must act on them (see [`Output`]).
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outbox.pop()
    }

    /// When (ms, the host's clock) the replica next wants [`Replica::handle_timeout`]. After
    /// the first input there is always a next time: the status timer runs for retransmission
    /// and heartbeats.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.timers.batch(),
            self.view_deadline(),
            self.status_deadline(),
            self.recovery_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .filter(|_| !self.epochs.retired)
    }

    /// Time passed (`now`, ms): cuts a batch whose delay ran out, gives up on a primary that
    /// did not deliver in time, and asks peers for what is missing.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.epochs.retired {
            return;
        }
        self.enter(now);
        if self.timers.take_batch_due() {
            self.propose(true);
        }
        self.check_view_timers();
        self.recovery_timeout();
        if self.status_deadline().is_some_and(|at| at <= now) {
            self.send_status();
            if self.awaits_batches() {
                // Asks again for the batches its new view needs.
                self.send_new_view();
            }
            // Far behind (say, restored after a crash): fetch the newest stable state; a
            // transfer without progress for an interval asks the next peer.
            if !self.maybe_start_transfer() {
                self.request_state(true);
            }
        }
        self.maybe_enter_epoch();
    }

    /// Bytes arrived at `now` (ms) from `from`, the peer key the transport authenticated.
    ///
    /// # Errors
    ///
    /// Why the message was refused ([`Error`]); it is counted in [`Metrics::rejected`] and
    /// changes nothing else. Errors are for logs and metrics: the host goes on either way.
    pub fn handle_message(
        &mut self,
        now: u64,
        from: &PublicKey,
        bytes: &[u8],
    ) -> Result<(), Error> {
        if self.epochs.retired {
            return self.retired_input(now, from, bytes);
        }
        self.enter(now);
        self.metrics.messages_received += 1;
        let result = Message::decode(bytes, self.config.max_message_bytes)
            .map_err(Error::from)
            .and_then(|message| self.on_message(from, message));
        self.count(result)
    }

    /// A request from the host's own clients (in-process, or a gateway it serves) at `now`.
    ///
    /// # Errors
    ///
    /// Why the request was refused (too large, stale, a duplicate, overloaded, a bad key or
    /// signature): an answer for the client.
    pub fn submit(&mut self, now: u64, request: Request) -> Result<(), Error> {
        if self.epochs.retired {
            return Err(Error::Retired);
        }
        self.enter(now);
        let result = self.on_request(request, true);
        self.count(result)
    }

    /// Notes the time of an input: the one way `now` comes in. The first input arms the
    /// status timer and hands the host what a restore left to deliver (the log's redo records
    /// past the store).
    pub(super) fn enter(&mut self, now: u64) {
        if self.timers.enter(now) {
            if let Mode::ViewChange { since } = &mut self.mode {
                // Restored mid view change: count its time from the restart.
                *since = now;
            }
            self.prepare_held_proposals();
            self.sign_own_checkpoints();
            self.deliver_ready();
            self.resume_evidence();
        }
    }

    /// Counts a refused input, and starts the next epoch if the input completed this one.
    pub(super) fn count(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        if let Err(err) = &result {
            *self.metrics.rejected.entry(err.label()).or_default() += 1;
        }
        self.maybe_enter_epoch();
        result
    }

    fn on_message(&mut self, from: &PublicKey, message: Message) -> Result<(), Error> {
        if let Message::Request(request) = message {
            // Only a client's own copy is forwarded: a copy a validator forwarded is never
            // forwarded again, or two replicas in different views would bounce it forever.
            return self.on_request(request, self.validators.id_of(from).is_none());
        }
        let Some(peer) = self.validators.id_of(from) else {
            return self.on_outsider(from, message);
        };
        // A validator sends only its own votes (retransmission included): one under another
        // signer is refused before its signature costs a check, so a peer cannot buy checks
        // with forged votes in an honest validator's name.
        if let Message::Vote(vote) = &message
            && vote.replica != peer
        {
            return Err(Error::WrongSigner(vote.replica));
        }
        match message {
            Message::Vote(vote) if vote.phase == Phase::Checkpoint => self.on_checkpoint_vote(vote),
            Message::PrePrepare(_) | Message::Vote(_) => self.on_consensus(from, message),
            Message::ViewChange(change) => self.on_view_change(peer, change),
            Message::NewView(new_view) => self.on_new_view(peer, new_view),
            Message::Status(status) => self.on_status(peer, status),
            Message::Committed(committed) => self.on_committed(committed),
            Message::Checkpoint(checkpoint) => self.on_stable_checkpoint(checkpoint),
            Message::FetchState(fetch) => self.on_fetch_state(peer, fetch),
            Message::StateManifest(manifest) => self.on_manifest(peer, manifest),
            Message::StateChunk(chunk) => self.on_chunk(peer, chunk),
            Message::FetchBatches(fetch) => self.on_fetch_batches(peer, fetch),
            Message::Batch(batch) => self.on_batch(batch),
            Message::Evidence(evidence) => self.on_evidence(peer, evidence),
            Message::EpochChange(change) => self.on_epoch_change(Some(peer), change),
            Message::RecoveryQuery(query) => self.on_recovery_query(peer, &query),
            Message::RecoveryAnswer(answer) => self.on_recovery_answer(peer, answer),
            Message::Request(_) | Message::Reply(_) | Message::Refusal(_) => {
                Err(Error::UnexpectedMessage(message.kind()))
            }
        }
    }

    fn on_pre_prepare(&mut self, from: &PublicKey, pre_prepare: PrePrepare) -> Result<(), Error> {
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
        // A proposal accepted in an older view is no statement of this view's primary.
        if let Some(slot) = self.log.get(&seq)
            && let Some(accepted) = slot.proposal.as_ref().filter(|p| p.view == vote.view)
        {
            if accepted.digest == vote.digest {
                if slot.batch.is_some() {
                    return Err(Error::Duplicate);
                }
                // A new view re-proposed this digest and the batch is still missing here. The
                // digest came from a prepared certificate or f + 1 votes, so an honest replica
                // checked the batch's requests: matching the digest is enough.
                return self.fill_batch(seq, batch);
            }
            // A second proposal for the slot: the primary equivocates if it signed both.
            self.metrics.signatures_verified += 1;
            primary_key.verify(&signed, &vote.signature)?;
            let first = accepted.clone();
            return self.report(seq, first, vote);
        }
        if let Some(slot) = self.log.get(&seq) {
            // Known without an accepted proposal of this view: committed (a QC from a peer or
            // the store), or prepared before a restart. A proposal for another digest can
            // never be ordered here, and the slot's batch must stay the one its QC certifies.
            if let Some(certificate) = &slot.certificate {
                return match certificate.digest == vote.digest {
                    true => Err(Error::Duplicate),
                    false => Err(Error::ConflictsWithCommit { seq }),
                };
            }
            if let Some(prepared) = slot.prepared.as_ref().map(|p| &p.proposal)
                && prepared.view == vote.view
                && prepared.digest != vote.digest
            {
                // The same primary signed another proposal in the same view: evidence.
                self.metrics.signatures_verified += 1;
                primary_key.verify(&signed, &vote.signature)?;
                let first = prepared.clone();
                return self.report(seq, first, vote);
            }
        }
        let leaves = match self.check_proposed_batch(&vote, &batch) {
            Ok(leaves) => leaves,
            // Refused, yet still the primary's statement: kept to match a conflicting one.
            Err(err) => return self.on_unaccepted_proposal(from, vote, err),
        };
        // One batch check for the primary's signature and every client's not verified here
        // on arrival.
        self.verify_proposal((&primary_key, &signed, &vote.signature), &batch, &leaves)?;
        self.intake.track_all(&leaves);
        let slot = self.log.entry(seq).or_default();
        slot.digest = Some(vote.digest);
        slot.proposal = Some(vote.clone());
        slot.leaves = leaves;
        slot.batch = Some(batch.clone());
        if self.id != primary {
            let accepted = Record::Accepted(vote.clone(), batch);
            self.cast_after(Phase::Prepare, seq, vote.digest, Some(accepted));
        }
        self.match_refused_proposal(&vote);
        self.timers.start_waiting();
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
        if let Some(slot) = self.log.get(&seq) {
            if slot.has_same(&vote) {
                return Err(Error::Duplicate);
            }
            // The slot already holds the certificate this vote would count towards: checking
            // its signature would only cost (the log keeps slots until the next checkpoint,
            // so in the normal case the last vote of every phase arrives here). On the fast
            // path a prepare counts until the slot commits.
            let complete = match vote.phase {
                Phase::Prepare if self.config.fast_path => slot.certificate.is_some(),
                Phase::Prepare => slot.commit_sent,
                _ => slot.certificate.is_some(),
            };
            if complete {
                return Err(Error::NotNeeded);
            }
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

    /// Moves slot `seq` forward: prepared → commit sent → committed → delivered.
    fn advance(&mut self, seq: u64) {
        let quorum = self.validators.quorum() - usize::from(planted!(self.config, QuorumOf2f));
        let primary = self.validators.primary(self.view);
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        let current = slot.proposal.as_ref().is_some_and(|p| p.view == self.view);
        if current
            && !slot.commit_sent
            && slot.is_prepared(quorum, primary)
            && let Some(digest) = slot.digest
        {
            // The certificate outlives the view, and a crash: a view change must carry it.
            slot.prepared = slot.prepared_certificate(quorum, primary);
            slot.commit_sent = true;
            if let Some(prepared) = slot.prepared.clone() {
                // The batch goes into the log once: with the accepted pre-prepare, or here.
                let batch = (!slot.batch_logged).then(|| slot.batch.clone()).flatten();
                slot.batch_logged |= batch.is_some();
                self.outbox.persist(Record::Prepared(prepared, batch));
            }
            self.cast(Phase::Commit, seq, digest);
        }
        let statement = (self.config.chain_id, self.validators.epoch());
        if let Some(slot) = self.log.get_mut(&seq)
            && slot.commit_sent
            && slot.certificate.is_none()
        {
            let fast = self.config.fast_path.then(|| self.validators.len());
            if slot.certify(statement, seq, quorum, fast) == Some(CommitPath::Fast) {
                self.metrics.fast_commits += 1;
            }
        }
        self.deliver_ready();
    }
}
