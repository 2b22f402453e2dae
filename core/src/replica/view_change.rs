//! Replacing the primary: timers that decide a view failed, the view-change and new-view
//! handlers, and entering a new view. The messages and their checks live in
//! [`crate::view_change`].

use alloc::vec::Vec;

use super::exactly_once::Freshness;
use super::output::{Destination, Record};
use super::timers::Resend;
use super::{Mode, Replica};
use crate::config::ReplicaId;
use crate::error::Error;
use crate::merkle;
use crate::message::Message;
use crate::new_view::{NewView, Plan, null_digest, plan, verify_new_view_counted};
use crate::statement::{Batch, Phase, Request, Vote};
use crate::view_change::{
    PreparedClaim, ViewChange, check_view_change_shape, verify_view_change_certificates,
    verify_view_change_signature,
};

/// A view change held for its signer: its own signature verified, its certificates only once
/// this replica, as the primary of its view, builds a new view from it.
#[derive(Clone, Debug)]
pub(super) struct HeldViewChange {
    pub(super) change: ViewChange,
    /// Whether the certificates it carries verified (always, for this replica's own).
    pub(super) certified: bool,
}

impl Replica {
    /// When a view timer fires next: in a view, the oldest uncommitted proposal, watched
    /// request or pending evidence; while changing view, the deadline for the new view.
    pub(super) fn view_deadline(&self) -> Option<u64> {
        match self.mode {
            Mode::Normal => {
                let proposal = self.timers.proposal_deadline();
                let request = self.intake.watch_deadline();
                let evidence = self.evidence.deadline();
                // A primary that does not fill the slots up to a scheduled boundary is
                // replaced like one that leaves a request out.
                let boundary = self
                    .awaits_boundary()
                    .then(|| self.timers.progress_deadline());
                [proposal, request, evidence, boundary]
                    .into_iter()
                    .flatten()
                    .min()
            }
            Mode::ViewChange { .. } => self.timers.new_view_deadline(),
        }
    }

    /// A delivery (`of_this_view`: of a batch this view certified, while it runs). Restarts
    /// the proposal timer if more waits; see [`super::timers::Timers::made_progress`] for
    /// the backoff.
    pub(super) fn made_progress(&mut self, of_this_view: bool) {
        let waiting = self
            .log
            .range(self.last_delivered + 1..)
            .any(|(_, slot)| slot.proposal.is_some());
        let cleared = !waiting && self.intake.watched_len() == 0;
        self.timers
            .made_progress(waiting, of_this_view && self.mode == Mode::Normal, cleared);
    }

    pub(super) fn check_view_timers(&mut self) {
        let now = self.timers.now();
        if self.mode == Mode::Normal {
            // Requests that executed, or that the client replaced with a later one, no longer
            // hold the primary to anything.
            let clients = &self.clients;
            self.intake.retain_watched(|request| {
                clients.freshness(&request.client, request.client_seq) == Freshness::Fresh
            });
        }
        if self.view_deadline().is_some_and(|deadline| deadline <= now) {
            self.metrics.timeouts_fired += 1;
            // A view fails if its new view never came, or if it came and the view timed out
            // before delivering anything: the next one waits twice as long (Castro and Liskov
            // 2002, section 4.5.2). Counting only the first kind, a new view that takes about
            // a timeout to reach the backups fails in every view at the same timeout.
            if matches!(self.mode, Mode::ViewChange { .. }) || self.timers.undelivered_new_view() {
                self.timers.view_failed();
            }
            self.start_view_change(self.view.saturating_add(1));
        }
    }

    /// Leaves the current view for `view`: signs, persists and broadcasts a view change with
    /// the stable checkpoint, every prepared certificate above it and its latest vote at each
    /// seq above it.
    pub(super) fn start_view_change(&mut self, view: u64) {
        if view <= self.view {
            return;
        }
        let since = match self.mode {
            Mode::ViewChange { since } => since,
            Mode::Normal => self.timers.now(),
        };
        self.view = view;
        self.mode = Mode::ViewChange { since };
        self.timers.left_view();
        self.drop_batch_fetch();
        self.send_view_change(view);
    }

    /// Signs, persists and broadcasts this replica's view change for `view`, the view it
    /// left for, then acts on the view changes held. Rollback protection may withhold it;
    /// the replica then follows the others, and sends it once it signs again.
    pub(super) fn send_view_change(&mut self, view: u64) {
        let mut prepared: Vec<_> = self
            .log
            .range(self.checkpoints.stable().seq + 1..)
            .filter_map(|(_, slot)| slot.prepared.clone())
            .collect();
        let omitted = match planted!(self.config, ViewChangeOmitsHighestPrepared) {
            true => prepared.pop().map(|p| p.proposal.seq),
            false => None,
        };
        let checkpoint = self.checkpoints.stable().clone();
        let mut voted: Vec<PreparedClaim> = self
            .signer
            .latest_votes()
            .filter(|vote| vote.seq > checkpoint.seq && Some(vote.seq) != omitted)
            .map(|vote| PreparedClaim {
                seq: vote.seq,
                view: vote.view,
                digest: vote.digest,
            })
            .collect();
        if planted!(self.config, ViewChangeOmitsVotes) {
            voted.clear();
        }
        // Withheld by rollback protection: the replica leaves the view silently, as one
        // whose messages were lost would, and follows the others.
        let Some(change) =
            self.signer
                .view_change(&mut self.metrics, view, checkpoint, (prepared, voted))
        else {
            self.signer.leave_views_below(view);
            self.after_view_changes();
            return;
        };
        let message = Message::ViewChange(change.clone());
        self.publish(Record::ViewChange(change.clone()), &message);
        let others = self.others();
        self.timers.sent_to(Resend::ViewChange, view, others);
        // Its certificates come from this replica's own log, each checked as it formed.
        let held = HeldViewChange {
            change,
            certified: true,
        };
        self.view_changes.insert(self.id, held);
        self.view_changes.retain(|_, held| held.change.view >= view);
        // Nothing is signed in a view once it is left: its votes need no guard any more.
        self.signer.leave_views_below(view);
        self.after_view_changes();
    }

    /// Acts on the view changes held: joins a higher view that f + 1 validators moved to (at
    /// least one of them honest, so no faulty minority can drag the cluster along), arms the
    /// new-view timer once a quorum asked for this view, and as its primary starts it.
    pub(super) fn after_view_changes(&mut self) {
        let mut higher: Vec<u64> = self
            .view_changes
            .values()
            .map(|held| held.change.view)
            .filter(|&view| view > self.view)
            .collect();
        let f = self.validators.max_faulty();
        if higher.len() > f {
            // The (f + 1)-th highest: a view at least one honest validator reached.
            higher.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&view) = higher.get(f) {
                self.start_view_change(view);
                return;
            }
        }
        if self.mode == Mode::Normal {
            return;
        }
        // A view change for a later view also gave up on this one (only each validator's
        // latest is kept, so counting exact matches would lose the validators that moved on
        // and could leave the rest waiting forever).
        let asking = self
            .view_changes
            .values()
            .filter(|held| held.change.view >= self.view)
            .count();
        if asking < self.validators.quorum() {
            return;
        }
        // Only once a quorum left the old view does waiting for the new primary make sense:
        // a replica cut off alone must not run through views the others never join.
        self.timers.arm_new_view();
        if self.is_primary() {
            self.send_new_view();
        }
    }

    pub(super) fn on_view_change(
        &mut self,
        peer: ReplicaId,
        change: ViewChange,
    ) -> Result<(), Error> {
        let behind =
            change.view < self.view || (change.view == self.view && self.mode == Mode::Normal);
        if behind {
            // The signer has not seen the new view that started this one yet.
            // Its signer waits for the new view: the resends back off per view.
            if self.mode == Mode::Normal {
                self.send_new_view_to(peer);
            }
            return Err(Error::StaleView {
                got: change.view,
                current: self.view,
            });
        }
        if change.replica != peer {
            // A view change travels from its signer only (its own, or its retransmission):
            // the signature does not cover the certificates' signatures, so only the one who
            // sent them can answer for them.
            return Err(Error::WrongSigner(change.replica));
        }
        if self
            .view_changes
            .get(&change.replica)
            .is_some_and(|known| known.change.view >= change.view)
        {
            return Err(Error::Duplicate);
        }
        let now = self.timers.now();
        if !self.budget.allows(peer, now) {
            return Err(Error::OverBudget);
        }
        check_view_change_shape(&self.validators, self.config.window, &change)?;
        // One check: its own signature. Every view change costs its signer a check of its
        // share, valid or not: a validator may sign one for every view there is.
        self.metrics.signatures_verified += 1;
        self.budget.charge(peer, 1, now);
        verify_view_change_signature(&self.config.chain_id, &self.validators, &change)?;
        // Its certificates wait: they matter only to the primary of its view, which checks
        // them when it builds the new view (`certified_view_change`). For counting who moved
        // on they add nothing — a faulty validator can always sign a valid view change without
        // any.
        let held = HeldViewChange {
            change,
            certified: false,
        };
        self.view_changes.insert(peer, held);
        self.after_view_changes();
        Ok(())
    }

    /// The view change held from `id`, with its certificates checked: the first time it is
    /// asked for, they are. One whose certificates fail is dropped and counted, and its
    /// signer, who sent it, pays for the checks: an honest validator's certificates always
    /// verify. None if there is none, if it failed, or if its signer's share is spent.
    fn certified_view_change(&mut self, id: ReplicaId) -> Option<ViewChange> {
        let now = self.timers.now();
        let held = self.view_changes.get(&id)?;
        if held.certified {
            return Some(held.change.clone());
        }
        if !self.budget.allows(id, now) {
            return None;
        }
        let signatures = held.change.certificate_signatures() as u64;
        self.metrics.signatures_verified += signatures;
        self.metrics.signatures_batch_verified += signatures;
        let verdict =
            verify_view_change_certificates(&self.config.chain_id, &self.validators, &held.change);
        match verdict {
            Ok(()) => {
                let held = self.view_changes.get_mut(&id)?;
                held.certified = true;
                Some(held.change.clone())
            }
            Err(err) => {
                self.budget.charge(id, signatures, now);
                self.view_changes.remove(&id);
                *self
                    .metrics
                    .rejected
                    .entry(Error::ViewChange(err).label())
                    .or_default() += 1;
                None
            }
        }
    }

    /// As the primary of the view being changed to, once a quorum of view changes for it is
    /// in (their certificates checked): signs the proposals they determine and the new view,
    /// and enters it.
    pub(super) fn send_new_view(&mut self) {
        if self.signer.withholds(Phase::PrePrepare, self.view) {
            // Rollback protection: it may have signed another new view for this view.
            return;
        }
        let quorum = self.validators.quorum();
        let candidates: Vec<ReplicaId> = self
            .view_changes
            .iter()
            .filter(|(_, held)| held.change.view == self.view)
            .map(|(&id, _)| id)
            .collect();
        if candidates.len() < quorum {
            // Validators that moved past this view count for its timer, but their view
            // changes cannot start it: wait for a quorum for exactly this view.
            return;
        }
        // The first quorum, in signer order, whose certificates hold.
        let mut view_changes: Vec<ViewChange> = Vec::with_capacity(quorum);
        for id in candidates {
            if view_changes.len() == quorum {
                break;
            }
            if let Some(change) = self.certified_view_change(id) {
                view_changes.push(change);
            }
        }
        if view_changes.len() < quorum {
            return;
        }
        let plan = plan(&self.config.chain_id, &self.validators, &view_changes);
        if !self.holds_planned_batches(&plan) {
            return;
        }
        // All or none: proposals signed before a refusal would never be sent, yet count as
        // this replica's votes.
        if !plan
            .proposals
            .iter()
            .all(|&(seq, digest)| self.may_sign_vote(Phase::PrePrepare, seq, digest))
        {
            return;
        }
        let proposals: Option<Vec<Vote>> = plan
            .proposals
            .iter()
            .map(|&(seq, digest)| self.sign_vote(Phase::PrePrepare, seq, digest))
            .collect();
        let Some(proposals) = proposals else {
            // A proposal of this view was signed before a restart with another digest: this
            // replica cannot lead the view; the next one will.
            return;
        };
        self.log_planned_batches(&proposals);
        let mut new_view = NewView::assemble(&self.validators, self.view, &view_changes, proposals);
        self.signer.new_view(&mut self.metrics, &mut new_view);
        let message = Message::NewView(new_view.clone());
        self.publish(Record::NewView(new_view.clone()), &message);
        self.enter_view(new_view, plan);
    }

    /// A new view from `peer` (its primary, or any validator relaying it). It is checked in
    /// stages, cheapest first ([`verify_new_view_counted`]); `peer` pays for the checks of
    /// one that fails (an honest validator relays only new views it checked itself). One that
    /// holds is free: it moves this replica into a view a quorum asked for, once per view.
    pub(super) fn on_new_view(&mut self, peer: ReplicaId, new_view: NewView) -> Result<(), Error> {
        if new_view.view < self.view || (new_view.view == self.view && self.mode == Mode::Normal) {
            return Err(Error::StaleView {
                got: new_view.view,
                current: self.view,
            });
        }
        let now = self.timers.now();
        if !self.budget.allows(peer, now) {
            return Err(Error::OverBudget);
        }
        // No bound on how far ahead the view may be: a valid new view proves a quorum (f + 1
        // honest among them) signed view changes for it, and a replica cut off for long joins
        // its peers' view this way.
        let mut verified = 0;
        let verdict = verify_new_view_counted(
            &self.config.chain_id,
            &self.validators,
            self.config.window,
            &new_view,
            &mut verified,
        );
        self.metrics.signatures_verified += verified;
        // All but the primary's signature are checked in batches.
        self.metrics.signatures_batch_verified += verified.saturating_sub(1);
        match verdict {
            Ok(plan) => {
                self.enter_view(new_view, plan);
                Ok(())
            }
            Err(err) => {
                self.budget.charge(peer, verified, now);
                Err(err.into())
            }
        }
    }

    /// Stores the batch of a slot whose proposal is known by digest only (a new view
    /// re-proposed it, and the batch had not reached this replica), then prepares it as a
    /// backup: the prepare waited for the batch.
    pub(super) fn fill_batch(&mut self, seq: u64, batch: Batch) -> Result<(), Error> {
        // The digest covers requests, not their signatures or attestations: their shape and
        // size are checked here, so a copy padded by its sender is never kept or served.
        if !batch.is_empty() {
            self.check_batch_limits(&batch)?;
        }
        let leaves = batch.leaves(&self.config.chain_id);
        let Some(slot) = self.log.get_mut(&seq) else {
            return Err(Error::Duplicate);
        };
        if Some(merkle::root(&leaves)) != slot.digest {
            return Err(Error::BatchDigestMismatch);
        }
        self.intake.track_all(&leaves);
        slot.leaves = leaves;
        slot.batch = Some(batch);
        self.prepare_reproposal(seq);
        self.advance(seq);
        self.deliver_ready();
        Ok(())
    }

    /// As a backup, prepares the current view's proposal at `seq` once it holds the batch (a
    /// re-proposal whose batch came late, or a proposal a restore brought back), persisting
    /// the batch first if no record has it: a vote of the prepare phase may
    /// decide a later view, so it must come from a replica that can hand the batch on, also
    /// after a crash ([`crate::view_change`], "Why a re-proposed batch can be found").
    pub(super) fn prepare_reproposal(&mut self, seq: u64) {
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let (Some(proposal), Some(batch)) = (&slot.proposal, &slot.batch) else {
            return;
        };
        if proposal.view != self.view || proposal.replica == self.id {
            return;
        }
        let null = null_digest(&self.config.chain_id);
        let accepted = (!slot.batch_logged && proposal.digest != null)
            .then(|| Record::Accepted(proposal.clone(), batch.clone()));
        let digest = proposal.digest;
        self.cast_after(Phase::Prepare, seq, digest, accepted);
    }

    /// Sends the new view that started this view to a peer still in an older one.
    pub(super) fn send_new_view_to(&mut self, peer: ReplicaId) {
        let view = self.view;
        let Some(new_view) = self.new_view.as_ref().filter(|nv| nv.view == view) else {
            return;
        };
        if !self.timers.may_resend(peer, Resend::NewView, view) {
            return;
        }
        let bytes = Message::NewView(new_view.clone()).encode();
        self.metrics.retransmitted += 1;
        self.send(Destination::Validator(peer), bytes);
    }

    /// Enters the view of a verified new view: adopts its checkpoint, installs its proposals
    /// (votes of older views no longer count), prepares them, and hands the requests that
    /// waited to the new primary.
    fn enter_view(&mut self, new_view: NewView, plan: Plan) {
        if let Mode::ViewChange { since } = self.mode {
            self.metrics.view_change_ms += self.timers.now().saturating_sub(since);
        }
        self.metrics.views_changed += 1;
        self.timers.begin_view();
        if self.validators.primary(new_view.view) != self.id {
            // The primary persisted it when it signed it.
            self.outbox.persist(Record::NewView(new_view.clone()));
        }
        self.view = new_view.view;
        self.mode = Mode::Normal;
        // The primary sent the new view to everyone: a peer that still shows an older view
        // most likely has a copy on its way, so neither the primary nor a backup relaying it
        // sends another before a retransmit interval (then backs off).
        let others = self.others();
        self.timers.sent_to(Resend::NewView, self.view, others);
        self.signer.leave_views_below(self.view);
        self.timers.clear_new_view();
        self.view_changes
            .retain(|_, held| held.change.view > new_view.view);
        let view = self.view;
        for queue in self.ahead.values_mut() {
            queue.retain(|message| match message {
                Message::PrePrepare(p) => p.vote.view >= view,
                Message::Vote(v) => v.view >= view,
                _ => false,
            });
        }
        // The window moves only once the log is rebuilt: moving it replays buffered messages
        // and lets the primary propose, both of which need the new view's log.
        self.take_checkpoint(plan.checkpoint);
        let max_s = plan
            .proposals
            .last()
            .map_or(self.checkpoints.stable().seq, |&(seq, _)| seq);
        // Proposals of older views above max_s never committed: they are void, and so are
        // this replica's votes for them. The batch of its latest vote stays until it votes
        // again there: an old certificate may still bring it back.
        let proposed = plan.proposals.iter().copied().collect();
        self.keep_voted_batches(&proposed);
        self.log
            .retain(|&seq, slot| seq <= max_s || slot.certificate.is_some());
        self.signer.forget_votes_left(view, &proposed);
        let chain = self.config.chain_id;
        let null = null_digest(&chain);
        let mut reproposed = Vec::new();
        for proposal in &new_view.proposals {
            let seq = proposal.seq;
            if seq <= self.low {
                continue;
            }
            // The null batch, one this replica fetched as the primary, or one it kept: a batch
            // the log holds already for the digest stays.
            let batch = match proposal.digest == null {
                true => Some(Batch::default()),
                false => self
                    .take_fetched(seq, proposal.digest)
                    .or_else(|| self.take_kept(seq, proposal.digest)),
            };
            self.log
                .entry(seq)
                .or_default()
                .repropose(&chain, proposal.clone(), batch);
            self.match_refused_proposal(proposal);
            reproposed.push((seq, proposal.digest));
        }
        self.next_seq = max_s.max(self.last_delivered) + 1;
        self.new_view = Some(new_view);
        // What is in flight is what the new view's log holds.
        self.intake.clear_in_flight();
        let executed = self.executed;
        for (_, slot) in self.log.range(executed + 1..) {
            self.intake.track_all(&slot.leaves);
        }
        self.drop_batch_fetch();
        for (seq, _) in reproposed {
            // A backup without the batch prepares once it comes ([`Replica::fill_batch`]).
            self.prepare_reproposal(seq);
            self.advance(seq);
        }
        self.update_low();
        let waiting = self
            .log
            .range(self.last_delivered + 1..)
            .any(|(_, slot)| slot.proposal.is_some());
        self.timers.entered_view(waiting);
        self.hand_over_requests();
    }

    /// Requests that waited (watched by a backup, pending at a deposed primary) go to the new
    /// primary, with fresh deadlines: the new view gets a full timeout to order them.
    fn hand_over_requests(&mut self) {
        let mut requests: Vec<Request> = self.intake.drain_pending();
        let deadline = self.timers.timeout_from_now();
        requests.extend(self.intake.rewatch(deadline));
        let evidence = self.evidence.rearm(deadline);
        if self.is_primary() {
            self.intake.clear_watched();
            for request in requests {
                let digest = request.digest(&self.config.chain_id);
                let fresh =
                    self.clients.freshness(&request.client, request.client_seq) == Freshness::Fresh;
                if fresh && self.intake.track(digest) {
                    self.intake.enqueue(request, digest);
                }
            }
            self.propose(false);
        } else {
            for request in requests {
                self.forward_to_primary(request);
            }
            let primary = Destination::Validator(self.validators.primary(self.view));
            for evidence in evidence {
                self.send(primary.clone(), Message::Evidence(evidence).encode());
            }
        }
    }
}
