//! Rollback protection: a replica started from its data dir asks its peers what they hold
//! signed by its key before it signs anything, so that a data dir restored from an old copy
//! (a backup, a VM snapshot) cannot lead it to sign a statement conflicting with one it
//! signed after the copy was taken.
//!
//! The host calls [`Replica::check_for_rollback`] once, before any input; each epoch the
//! replica enters afterwards is checked again (a replica restored into an old epoch may
//! catch up into one it had signed in). Until f + 1 peers
//! answered ([`RecoveryAnswer`]: the statements themselves, which the replica checks against
//! its own key, so a peer can withhold but not invent one), and for up to a view timeout
//! while more than f + 1 may still answer, the signer is sealed: no vote, view change or
//! checkpoint (replies stay: a reply repeats freely). Then:
//!
//! - every statement the answers hold is in the signed index, so none is contradicted;
//! - if one of them is missing from the log (it signed in the current view or later, above
//!   its low watermark, and the log does not have it), the log was rolled back, and the
//!   replica closes to itself every view up to the highest such statement's view, and view
//!   changes until its stable checkpoint passes the highest such seq: it may have signed
//!   other statements there that no peer that answered holds. It takes part again from the
//!   next view change the others make. The closed views cost the cluster one validator until
//!   then, never safety;
//! - a new view it led that its log lacks closes that view the same way (one without
//!   proposals shows in no vote);
//! - the views below the (f + 1)-th highest view the answers say their senders entered are
//!   closed too: a quorum left them, and peers drop a view's slots when they leave it, so a
//!   vote it signed there may survive nowhere.
//!
//! What it finds is judged against the view, stable checkpoint and statements as restored
//! (answers and other traffic move them meanwhile), and logged at once ([`Record::Fenced`]):
//! a restart keeps the fence.
//!
//! A normal restart finds nothing missing (every signed statement is logged before it is
//! sent) and costs one round trip. Compared with CometBFT's `double_sign_check_height`, no
//! height is configured and nothing is waited out: the check is by content, at every start.
//! The guarantee is as good as the answers: statements that reached only validators that did
//! not answer stay unknown (the replica waits up to a view timeout for every peer, not only
//! the f + 1 it needs).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::output::{Destination, Output, Record};
use super::{Mode, Replica};
use crate::certificate::{CommitPath, QuorumCertificate};
use crate::config::ReplicaId;
use crate::crypto::{Digest, VerifyingKey};
use crate::error::Error;
use crate::message::{Message, RecoveryAnswer, RecoveryQuery};
use crate::new_view::NewView;
use crate::statement::{Phase, Vote};
use crate::view_change::ViewChangeSummary;

/// What rollback protection found, once f + 1 peers answered
/// ([`crate::Output::Recovered`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Peers that answered.
    pub answered: usize,
    /// Statements signed by this replica that peers held and its log lacked: 0 unless the
    /// data dir was rolled back (or the key runs in a second place).
    pub lost: usize,
    /// The highest view it signs nothing in (no vote, view change or new view): that of a
    /// lost statement, or one a quorum of peers left; a logged fence from before counts too.
    pub closed_through_view: Option<u64>,
    /// With `lost`, the highest seq of a lost vote: no view change until the stable
    /// checkpoint reaches it.
    pub view_changes_from_seq: Option<u64>,
}

/// What rollback protection closes to a replica that lost signed statements, for the rest of
/// its epoch; logged ([`Record::Fenced`]) so that a restart keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    /// The epoch it holds in.
    pub epoch: u64,
    /// Votes, view changes and new views in views at or below it are withheld: the replica
    /// may have signed others there that no peer that answered holds, or a quorum left them.
    /// `None` when only checkpoint votes were lost (they belong to no view).
    pub view: Option<u64>,
    /// View changes are withheld until the stable checkpoint reaches this seq (the highest of
    /// a lost vote): a view change reports the slots above its checkpoint from the log, which
    /// lost them, so until then it could leave out a batch it helped commit.
    pub seq: u64,
}

impl Fence {
    /// The fence that closes what either closes (the two are of one epoch).
    pub(super) fn merge(self, other: Fence) -> Fence {
        Fence {
            epoch: self.epoch.max(other.epoch),
            view: self.view.max(other.view),
            seq: self.seq.max(other.seq),
        }
    }
}

/// Where the check stands.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// Whether the host asked for it: each epoch entered is checked again.
    enabled: bool,
    /// When it started asking (ms); `None` when not asking (settled, or never started).
    asking_since: Option<u64>,
    /// When the query last went out (ms).
    asked_at: u64,
    /// The view, stable checkpoint and signed statements as restored, before answers (or
    /// anything else) moved them: what is lost is judged against these.
    restored: Restored,
    answered: BTreeSet<ReplicaId>,
    /// Peers whose answer failed its checks: an honest peer never sends one, so one try each.
    refused: BTreeSet<ReplicaId>,
    /// The last view each answer says its sender entered.
    entered: Vec<u64>,
    lost: usize,
    fence: Option<Fence>,
    /// When each peer's query was last answered (ms): at most one answer per retransmit
    /// interval, since each can hold a window of votes.
    served: BTreeMap<ReplicaId, u64>,
}

#[derive(Debug, Default)]
struct Restored {
    view: u64,
    stable: u64,
    statements: BTreeSet<(Phase, u64, u64, Digest)>,
    /// The new view it entered, as restored.
    new_view: Option<NewView>,
}

/// What one answer shows the replica signed that its log lacks.
struct Lost {
    votes: Vec<Vote>,
    view_change: Option<ViewChangeSummary>,
    /// The view of a new view it led that its log lacks.
    led: Option<u64>,
}

impl Recovery {
    /// Whether the host started it ([`Replica::check_for_rollback`]).
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }
}

impl Replica {
    /// Starts rollback protection (what it finds: [`RecoveryReport`], [`Fence`]): seals the signer
    /// and asks every peer what it holds signed by this replica. Call once, after
    /// [`Replica::new`] or [`Replica::restore`] and before any input; a replica alone in its
    /// set has no one to ask and skips it.
    pub fn check_for_rollback(&mut self, now: u64) {
        self.recovery.enabled = true;
        if self.validators.len() < 2 {
            self.enter(now);
            return;
        }
        // Sealed before time moves: the first tick may vote on held proposals.
        self.signer.seal();
        self.enter(now);
        self.recovery.asking_since = Some(now);
        self.recovery.restored = Restored {
            view: self.view,
            stable: self.checkpoints.stable().seq,
            statements: self.signer.statements(),
            new_view: self.new_view.clone(),
        };
        self.recovery.answered.clear();
        self.recovery.refused.clear();
        self.recovery.entered.clear();
        self.recovery.lost = 0;
        self.recovery.fence = None;
        self.ask_for_own_statements();
    }

    /// Whether rollback protection still waits for answers (nothing is signed meanwhile).
    pub fn is_recovering(&self) -> bool {
        self.recovery.asking_since.is_some()
    }

    fn ask_for_own_statements(&mut self) {
        self.recovery.asked_at = self.timers.now();
        let query = Message::RecoveryQuery(RecoveryQuery {
            epoch: self.validators.epoch(),
        })
        .encode();
        let peers: Vec<ReplicaId> = self
            .others()
            .into_iter()
            .filter(|id| {
                !self.recovery.answered.contains(id) && !self.recovery.refused.contains(id)
            })
            .collect();
        for peer in peers {
            self.send(Destination::Validator(peer), query.clone());
        }
    }

    /// When the check next needs time: to ask again, or to stop waiting for more than
    /// f + 1 answers.
    pub(super) fn recovery_deadline(&self) -> Option<u64> {
        let since = self.recovery.asking_since?;
        let again = self
            .recovery
            .asked_at
            .saturating_add(self.config.retransmit_ms);
        // Past the wait for every peer, only answers settle it: no deadline in the past.
        let enough = since.saturating_add(self.config.view_timeout_ms);
        Some(match enough > self.timers.now() {
            true => again.min(enough),
            false => again,
        })
    }

    /// Time passed: settles if enough answered, else asks again those that did not.
    pub(super) fn recovery_timeout(&mut self) {
        let now = self.timers.now();
        if self.recovery.asking_since.is_none() {
            return;
        }
        self.maybe_settle();
        let again = self
            .recovery
            .asked_at
            .saturating_add(self.config.retransmit_ms);
        if self.is_recovering() && now >= again {
            self.ask_for_own_statements();
        }
    }

    /// A peer asks what this replica holds signed by it: answers from the log, the
    /// checkpoint votes and the view changes, once per retransmit interval.
    pub(super) fn on_recovery_query(
        &mut self,
        peer: ReplicaId,
        query: &RecoveryQuery,
    ) -> Result<(), Error> {
        let now = self.timers.now();
        if query.epoch != self.validators.epoch() {
            return Err(Error::OtherEpoch {
                got: query.epoch,
                current: self.validators.epoch(),
            });
        }
        let last = self.recovery.served.get(&peer).copied();
        if last.is_some_and(|at| now < at.saturating_add(self.config.retransmit_ms)) {
            return Err(Error::RateLimited);
        }
        self.recovery.served.insert(peer, now);
        // It restarted: what it was sent before is gone with its memory.
        self.timers.peer_restarted(peer);
        let mut votes: Vec<_> = self
            .log
            .values()
            .flat_map(|slot| slot.signed_by(peer))
            .cloned()
            .collect();
        // Its signatures inside the quorum certificates held above the stable checkpoint: a
        // peer that entered a later view dropped the slot's votes but keeps these, and a view
        // change of the asker must not leave their batches out. Only those of this epoch: an
        // id in another epoch's certificate names a place in another set, and its vote would
        // fail the asker's check of this answer.
        let stable = self.checkpoints.stable().seq;
        let epoch = self.validators.epoch();
        let certified = self
            .log
            .range(stable.saturating_add(1)..)
            .filter_map(|(_, slot)| slot.certificate.as_ref())
            .filter(|certificate| certificate.epoch == epoch);
        for certificate in certified {
            let primary = self.validators.primary(certificate.view);
            votes.extend(vote_in_certificate(certificate, peer, primary));
        }
        // Its proposals refused here are its signatures too (a peer may have accepted them),
        // and so are those of a new view it led.
        votes.extend(self.evidence.refused_of(peer).cloned());
        // The new view it led goes whole (it signed that too), with its proposals inside.
        let led = self
            .new_view
            .as_ref()
            .filter(|new_view| self.validators.primary(new_view.view) == peer)
            .cloned()
            .map(Box::new);
        votes.sort_by_key(|vote| (vote.phase, vote.view, vote.seq, vote.digest));
        votes.dedup();
        votes.extend(self.checkpoints.own_votes_above(stable, peer));
        // Its latest view change: held, or inside the new view that started this view.
        let in_new_view = self
            .new_view
            .iter()
            .flat_map(|new_view| &new_view.view_changes)
            .find(|change| change.replica == peer);
        let view_change = match self.view_changes.get(&peer) {
            Some(held) => Some(held.change.summary()),
            None => in_new_view.cloned(),
        };
        let answer = Message::RecoveryAnswer(RecoveryAnswer {
            epoch: self.validators.epoch(),
            votes,
            view_change,
            view: self.new_view.as_ref().map_or(0, |new_view| new_view.view),
            led,
            stable: self.checkpoints.stable().clone(),
        });
        self.send(Destination::Validator(peer), answer.encode());
        Ok(())
    }

    /// A peer's answer: its statements signed by this replica, each checked against this
    /// replica's key unless it held the very same one when the check began. Counted once per
    /// peer; a peer whose answer fails is not asked again in this check.
    ///
    /// # Errors
    ///
    /// [`Error::Crypto`] or [`Error::WrongSigner`] for a statement that is not this replica's
    /// signature, [`Error::UnexpectedMessage`] for more votes than a window holds: the whole
    /// answer is dropped.
    pub(super) fn on_recovery_answer(
        &mut self,
        peer: ReplicaId,
        answer: RecoveryAnswer,
    ) -> Result<(), Error> {
        if !self.is_recovering()
            || self.recovery.answered.contains(&peer)
            || self.recovery.refused.contains(&peer)
            || answer.epoch != self.validators.epoch()
        {
            return Ok(());
        }
        let key = *self.validators.key(self.id).ok_or(Error::NotAValidator)?;
        let lost = match self.lost_in(&answer, &key) {
            Ok(lost) => lost,
            Err(err) => {
                self.recovery.refused.insert(peer);
                return Err(err);
            }
        };
        let before = self.recovery.fence;
        if let Some(change) = &lost.view_change {
            // It had left for a view its log never reached, reporting votes up to there.
            self.recovery.lost += 1;
            let reported = change.prepared.iter().chain(&change.voted);
            let seq = reported.map(|c| c.seq).max().unwrap_or(0);
            self.close(Some(change.view), seq);
        }
        if let Some(view) = lost.led {
            // It started a view with a new view its log lacks.
            self.recovery.lost += 1;
            self.close(Some(view), 0);
        }
        for vote in &lost.votes {
            self.recovery.lost += 1;
            let view = (vote.phase != Phase::Checkpoint).then_some(vote.view);
            self.close(view, vote.seq);
        }
        if let Some(fence) = self
            .recovery
            .fence
            .filter(|_| self.recovery.fence != before)
        {
            // Logged at once: a crash before the check settles must not lose it (the stable
            // checkpoint adopted next would put the lost votes below what the next check
            // compares).
            self.outbox
                .persist(Record::Fenced(fence, lost.votes.clone()));
        }
        for vote in lost.votes {
            self.signer.remember_lost(vote);
        }
        // In the signer at once (sealed meanwhile), so a compaction before the check settles
        // keeps the fence too (`durable_records`).
        self.signer.close(self.recovery.fence);
        // Final at the sender: nothing there is signed again (a certificate, checked).
        if answer.stable.seq > self.checkpoints.stable().seq
            && let Err(err) = self.on_stable_checkpoint(answer.stable)
        {
            self.recovery.refused.insert(peer);
            return Err(err);
        }
        self.recovery.entered.push(answer.view);
        self.recovery.answered.insert(peer);
        self.maybe_settle();
        Ok(())
    }

    /// Adds (`view`, `seq`) to the fence this check sets.
    fn close(&mut self, view: Option<u64>, seq: u64) {
        let epoch = self.validators.epoch();
        let closed = Fence { epoch, view, seq };
        let fence = self.recovery.fence.map_or(closed, |f| f.merge(closed));
        self.recovery.fence = Some(fence);
    }

    /// The statements of `answer` this replica signed (checked against its `key`) and did not
    /// hold as restored, where they can bind it: a vote above the restored stable checkpoint,
    /// of the restored view or later (a checkpoint vote, of any view), and a view change
    /// beyond the restored view. Earlier ones are final or of views left, signed again never.
    fn lost_in(&mut self, answer: &RecoveryAnswer, key: &VerifyingKey) -> Result<Lost, Error> {
        // Per slot of the window: a proposal, a prepare and a commit, a prepared
        // certificate's proposal and prepare, two refused proposals, a new view's proposal,
        // a quorum certificate's vote; and the checkpoints.
        let window = self.config.window as usize;
        let most = 9 * window + window / self.config.checkpoint_interval.max(1) as usize + 2;
        if answer.votes.len() > most {
            return Err(Error::UnexpectedMessage(
                "recovery answer over a window of votes",
            ));
        }
        let chain = self.config.chain_id;
        let epoch = self.validators.epoch();
        let restored = &self.recovery.restored;
        // A new view it led, from the view it was restored into or later: its own signature.
        let led = answer.led.as_deref().filter(|new_view| {
            self.validators.primary(new_view.view) == self.id && new_view.view >= restored.view
        });
        if let Some(new_view) = led {
            self.metrics.signatures_verified += 1;
            key.verify(&new_view.signed_digest(&chain, epoch), &new_view.signature)?;
        }
        let led_proposals = led.iter().flat_map(|new_view| &new_view.proposals);
        let mut lost = Vec::new();
        for vote in answer.votes.iter().chain(led_proposals) {
            let statement = (vote.phase, vote.view, vote.seq, vote.digest);
            let binding = vote.phase == Phase::Checkpoint || vote.view >= restored.view;
            if restored.statements.contains(&statement) || !binding || vote.seq <= restored.stable {
                continue;
            }
            if vote.replica != self.id {
                return Err(Error::WrongSigner(vote.replica));
            }
            self.metrics.signatures_verified += 1;
            key.verify(&vote.signed_digest(&chain, epoch), &vote.signature)?;
            // One its log holds under another digest was signed twice already: nothing to
            // withhold any more.
            if self.signer.get(vote.phase, vote.view, vote.seq).is_none() {
                lost.push(vote.clone());
            }
        }
        let later = |change: &&ViewChangeSummary| {
            change.replica == self.id && change.view > self.recovery.restored.view
        };
        let view_change = match answer.view_change.as_ref().filter(later) {
            Some(change) => {
                self.metrics.signatures_verified += 1;
                key.verify(&change.signed_digest(&chain, epoch), &change.signature)?;
                Some(change.clone())
            }
            None => None,
        };
        let led = led
            .filter(|&new_view| restored.new_view.as_ref() != Some(new_view))
            .map(|new_view| new_view.view);
        Ok(Lost {
            votes: lost,
            view_change,
            led,
        })
    }

    /// Unseals once every peer answered, or f + 1 did and a view timeout passed.
    fn maybe_settle(&mut self) {
        let Some(since) = self.recovery.asking_since else {
            return;
        };
        let others = self.validators.len().saturating_sub(1);
        let needed = self.validators.reply_quorum().min(others);
        let answered = self.recovery.answered.len();
        let waited = self.timers.now() >= since.saturating_add(self.config.view_timeout_ms);
        if answered < others && !(answered >= needed && waited) {
            return;
        }
        self.recovery.asking_since = None;
        // The (f + 1)-th highest view entered: one an honest peer entered, so a quorum left
        // every view below it (a Byzantine peer cannot push it up). Signing there would
        // serve no one, and a statement of those views this replica signed may be lost
        // with no peer left holding it (they drop a view's slots on leaving it).
        let mut entered = core::mem::take(&mut self.recovery.entered);
        entered.sort_unstable_by(|a, b| b.cmp(a));
        let left = entered
            .get(self.validators.max_faulty())
            .copied()
            .unwrap_or(0);
        if left > self.recovery.restored.view {
            let before = self.recovery.fence;
            self.close(Some(left - 1), 0);
            if let Some(fence) = self
                .recovery
                .fence
                .filter(|_| self.recovery.fence != before)
            {
                self.outbox.persist(Record::Fenced(fence, Vec::new()));
            }
        }
        let fence = self.recovery.fence;
        self.signer.unseal(fence);
        let fence = self.signer.fence();
        self.recovery.restored = Restored::default();
        // As primary, never propose at or below a final seq, nor at one it proposed before.
        let proposed = self.signer.highest_proposal(self.view);
        let stable = self.checkpoints.stable().seq;
        self.next_seq = self.next_seq.max(stable.max(proposed).saturating_add(1));
        self.outbox.push(Output::Recovered(RecoveryReport {
            answered,
            lost: self.recovery.lost,
            closed_through_view: fence.and_then(|f| f.view),
            view_changes_from_seq: fence.map(|f| f.seq),
        }));
        self.sign_what_was_withheld();
    }

    /// Signs what it withheld while sealed, as far as the fence allows: its checkpoints
    /// reached meanwhile; the view change of the view it left meanwhile (and, as the next
    /// primary, the new view), or the prepares of the current view's proposals whose batches
    /// it holds and the commits of those prepared meanwhile; a primary proposes what waits.
    /// Without them a cluster that needs this replica's vote (another validator down) would
    /// wait for a view change that needs its view change.
    fn sign_what_was_withheld(&mut self) {
        self.sign_own_checkpoints();
        let view = self.view;
        if let Mode::ViewChange { .. } = self.mode {
            let sent = self
                .view_changes
                .get(&self.id)
                .is_some_and(|held| held.change.view >= view);
            match sent {
                // Counted already: acting on the view changes held may start the new view.
                true => self.after_view_changes(),
                false => self.send_view_change(view),
            }
            return;
        }
        self.prepare_held_proposals();
        let prepared: Vec<(u64, Digest)> = self
            .log
            .iter()
            .filter(|(_, slot)| slot.commit_sent && slot.certificate.is_none())
            .filter_map(|(&seq, slot)| {
                let proposal = slot.proposal.as_ref().filter(|p| p.view == view)?;
                Some((seq, proposal.digest))
            })
            .filter(|&(seq, _)| self.signer.get(Phase::Commit, view, seq).is_none())
            .collect();
        for (seq, digest) in prepared {
            self.cast(Phase::Commit, seq, digest);
            self.advance(seq);
        }
        self.propose(false);
    }
}

/// `signer`'s signature in `certificate`, as the vote it is: a commit, or on the fast path
/// the pre-prepare of the view's `primary` or a prepare.
fn vote_in_certificate(
    certificate: &QuorumCertificate,
    signer: ReplicaId,
    primary: ReplicaId,
) -> Option<Vote> {
    let (_, signature) = certificate
        .signatures
        .iter()
        .find(|(id, _)| *id == signer)?;
    let phase = match certificate.path {
        CommitPath::ThreePhase => Phase::Commit,
        CommitPath::Fast if signer == primary => Phase::PrePrepare,
        CommitPath::Fast => Phase::Prepare,
    };
    Some(Vote {
        phase,
        view: certificate.view,
        seq: certificate.seq,
        digest: certificate.digest,
        replica: signer,
        signature: *signature,
    })
}
