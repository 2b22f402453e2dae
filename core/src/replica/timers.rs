//! The timers: the host's clock as the replica last saw it, and every deadline the replica
//! keeps — the batch delay, the view timeout with its backoff, the new-view deadline and the
//! status (retransmission and heartbeat) interval.
//!
//! Time arrives one way: each entry point hands `now` to [`Timers::enter`], and everything
//! else reads [`Timers::now`]. Deadlines are absolute ms on the host's monotonic clock.

use alloc::collections::BTreeMap;

use crate::config::{Config, ReplicaId};

/// Deadlines and the clock, in ms.
#[derive(Debug)]
pub(super) struct Timers {
    /// The time of the input being handled.
    now: u64,
    /// When the primary cuts a batch that is not full.
    batch: Option<u64>,
    /// Views in a row that failed to make progress; doubles the view timeout.
    failed_views: u32,
    /// Whether the view was entered through a new view and delivered nothing since (the
    /// view the replica started in was not).
    undelivered_new_view: bool,
    /// When the view was entered (0 for the view the replica started in).
    entered_at: u64,
    /// Since when an accepted proposal has waited to commit, with no delivery since.
    waiting_since: Option<u64>,
    /// While changing view: when to give up on the new primary (armed once a quorum asked).
    new_view: Option<u64>,
    /// The last delivery (or view start): retransmission starts when it is old.
    progress_at: u64,
    /// When this replica last sent a status; set by the first input (the replica learns the
    /// time only from its inputs), which arms the status timer.
    last_status: Option<u64>,
    /// When each peer was last served retransmissions, and what it showed then.
    served: BTreeMap<ReplicaId, Served>,
    /// The last copy of each view-change message of this replica's sent to each peer.
    resent: BTreeMap<(ReplicaId, Resend), Resent>,
    /// When each peer was last served the batches it asked for as a new primary.
    batches_served: BTreeMap<ReplicaId, u64>,
    view_timeout_ms: u64,
    max_timeout_factor: u64,
    retransmit_ms: u64,
    heartbeat_ms: u64,
    batch_delay_ms: u64,
}

/// When a peer was last served retransmissions, what it showed, and how long it waits
/// before it is served again while it shows the same.
#[derive(Clone, Copy, Debug)]
struct Served {
    at: u64,
    shown: u64,
    gap: u64,
}

/// The large view-change messages, whose resends to a peer back off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Resend {
    /// This replica's view change.
    ViewChange,
    /// The new view of the view this replica runs.
    NewView,
}

/// The last copy of a view-change message sent to a peer: for which view, when, and how
/// long the next one waits.
#[derive(Clone, Copy, Debug)]
struct Resent {
    view: u64,
    at: u64,
    gap: u64,
}

/// A fingerprint of what a peer shows (FNV-1a over `words`): equal while the peer shows the
/// same progress. Not a commitment: a peer that varies it gets the base interval, as every
/// peer did before.
pub(super) fn fingerprint(words: impl IntoIterator<Item = u64>) -> u64 {
    words.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, word| {
        (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Timers {
    /// Timers with the config's intervals, none armed; the clock starts at the first input.
    pub(super) fn new(config: &Config) -> Self {
        Timers {
            now: 0,
            batch: None,
            failed_views: 0,
            undelivered_new_view: false,
            entered_at: 0,
            waiting_since: None,
            new_view: None,
            progress_at: 0,
            last_status: None,
            served: BTreeMap::new(),
            resent: BTreeMap::new(),
            batches_served: BTreeMap::new(),
            view_timeout_ms: config.view_timeout_ms,
            max_timeout_factor: config.max_timeout_factor,
            retransmit_ms: config.retransmit_ms,
            heartbeat_ms: config.heartbeat_ms,
            batch_delay_ms: config.batch_delay_ms,
        }
    }

    /// Notes the time of an input. Returns true for the first input, which arms the status
    /// timer and counts as progress.
    pub(super) fn enter(&mut self, now: u64) -> bool {
        self.now = now;
        if self.last_status.is_some() {
            return false;
        }
        self.last_status = Some(now);
        self.progress_at = now;
        true
    }

    /// The time of the input being handled.
    pub(super) fn now(&self) -> u64 {
        self.now
    }

    /// The view timeout now: the base doubled for each view in a row that failed, capped at
    /// `max_timeout_factor` times the base.
    pub(super) fn timeout(&self) -> u64 {
        let factor = 1u64
            .checked_shl(self.failed_views)
            .unwrap_or(u64::MAX)
            .min(self.max_timeout_factor);
        self.view_timeout_ms.saturating_mul(factor)
    }

    /// Whether nothing progressed (a delivery, a view entered, the first input) for `ms`.
    pub(super) fn idle_for(&self, ms: u64) -> bool {
        self.now >= self.progress_at.saturating_add(ms)
    }

    /// The last progress (a delivery, a view entered, the first input) plus the view timeout.
    pub(super) fn progress_deadline(&self) -> u64 {
        self.progress_at.saturating_add(self.timeout())
    }

    /// `now` plus the view timeout.
    pub(super) fn timeout_from_now(&self) -> u64 {
        self.now.saturating_add(self.timeout())
    }

    /// The batch deadline, if armed.
    pub(super) fn batch(&self) -> Option<u64> {
        self.batch
    }

    /// Arms the batch deadline a batch delay from now unless it runs already (`pending`), or
    /// disarms it (nothing left that can be proposed).
    pub(super) fn set_batch(&mut self, pending: bool) {
        self.batch = match pending {
            true => Some(
                self.batch
                    .unwrap_or(self.now.saturating_add(self.batch_delay_ms)),
            ),
            false => None,
        };
    }

    /// Whether the batch deadline passed; disarms it if so.
    pub(super) fn take_batch_due(&mut self) -> bool {
        let due = self.batch.is_some_and(|deadline| deadline <= self.now);
        if due {
            self.batch = None;
        }
        due
    }

    /// When the oldest accepted proposal times out, if one waits.
    pub(super) fn proposal_deadline(&self) -> Option<u64> {
        self.waiting_since
            .map(|since| since.saturating_add(self.timeout()))
    }

    /// Starts the proposal timer unless it already runs.
    pub(super) fn start_waiting(&mut self) {
        if self.waiting_since.is_none() {
            self.waiting_since = Some(self.now);
        }
    }

    /// A delivery; the proposal timer restarts if more proposals wait (`waiting`).
    ///
    /// `of_this_view`: the view itself delivered (a batch it certified, while it runs). That
    /// clears a new view's failure, and resets the backoff once the view has lasted a whole
    /// (backed-off) timeout or left nothing waiting (`cleared`): a view that delivers once
    /// and then stalls again on a slow link must not fall back to the base timeout that
    /// failed it. A catch-up delivery (a batch an earlier view certified, or one delivered
    /// while changing view) says nothing of the view.
    pub(super) fn made_progress(&mut self, waiting: bool, of_this_view: bool, cleared: bool) {
        self.progress_at = self.now;
        self.waiting_since = waiting.then_some(self.now);
        if !of_this_view {
            return;
        }
        self.undelivered_new_view = false;
        if cleared || self.now >= self.entered_at.saturating_add(self.timeout()) {
            self.failed_views = 0;
        }
    }

    /// The new view arrived: its deadline is off.
    pub(super) fn clear_new_view(&mut self) {
        self.new_view = None;
    }

    /// A new view starts being entered: nothing delivered in it yet. Called before the
    /// entry replays what waited, which may deliver in the view.
    pub(super) fn begin_view(&mut self) {
        self.entered_at = self.now;
        self.undelivered_new_view = true;
    }

    /// A view entered: progress now, and the proposal timer restarts if proposals wait.
    pub(super) fn entered_view(&mut self, waiting: bool) {
        self.progress_at = self.now;
        self.waiting_since = None;
        if waiting {
            self.start_waiting();
        }
    }

    /// A view left: no batch is cut and no proposal waits in it.
    pub(super) fn left_view(&mut self) {
        self.batch = None;
        self.waiting_since = None;
        self.new_view = None;
    }

    /// Whether the view was entered through a new view and delivered nothing since.
    pub(super) fn undelivered_new_view(&self) -> bool {
        self.undelivered_new_view
    }

    /// A view failed: its view change timed out, or it was entered and timed out before it
    /// delivered anything. The next view waits twice as long (up to the cap).
    pub(super) fn view_failed(&mut self) {
        self.failed_views = self.failed_views.saturating_add(1);
    }

    /// Views in a row that failed.
    pub(super) fn failed_views(&self) -> u32 {
        self.failed_views
    }

    /// When to give up on the new primary, if armed.
    pub(super) fn new_view_deadline(&self) -> Option<u64> {
        self.new_view
    }

    /// Arms the new-view deadline a view timeout from now, unless it runs already.
    pub(super) fn arm_new_view(&mut self) {
        if self.new_view.is_none() {
            self.new_view = Some(self.timeout_from_now());
        }
    }

    /// Progress that is not a delivery (a state chunk or manifest arrived): retransmission
    /// waits a full interval again.
    pub(super) fn progress(&mut self) {
        self.progress_at = self.now;
    }

    /// When to send the next status: a retransmit interval after the last progress (or the
    /// last status) while work waits (`busy`), a heartbeat interval after the last status
    /// otherwise. None before the first input.
    pub(super) fn status_deadline(&self, busy: bool) -> Option<u64> {
        let last = self.last_status?;
        Some(match busy {
            true => last
                .max(self.progress_at)
                .saturating_add(self.retransmit_ms),
            false => last.saturating_add(self.heartbeat_ms),
        })
    }

    /// A status went out now.
    pub(super) fn status_sent(&mut self) {
        self.last_status = Some(self.now);
    }

    /// Whether `peer`, which shows `shown` (a [`fingerprint`] of the status or message that
    /// asks), may be served retransmissions now; if so, starts its next interval.
    ///
    /// Once per retransmit interval while what the peer shows changes; while it shows the
    /// same, the interval doubles, up to the longest view timeout. A peer that shows no
    /// progress may be waiting for what it was sent: a new view or a window of certificates
    /// takes longer than the interval to cross a slow link, and sending it again every
    /// interval queues copy after copy on that link ahead of everything else.
    pub(super) fn may_serve(&mut self, peer: ReplicaId, shown: u64) -> bool {
        let base = self.retransmit_ms;
        let longest = self.longest_timeout();
        let next = match self.served.get(&peer) {
            None => base,
            Some(last) if last.shown != shown => {
                if self.now < last.at.saturating_add(base) {
                    return false;
                }
                base
            }
            Some(last) => {
                if self.now < last.at.saturating_add(last.gap) {
                    return false;
                }
                last.gap.saturating_mul(2).min(longest)
            }
        };
        self.served.insert(
            peer,
            Served {
                at: self.now,
                shown,
                gap: next,
            },
        );
        true
    }

    /// Notes that this replica's `kind` for `view` went to each of `peers` now: a resend to
    /// one of them waits a retransmit interval, then twice as long each time.
    pub(super) fn sent_to(
        &mut self,
        kind: Resend,
        view: u64,
        peers: impl IntoIterator<Item = ReplicaId>,
    ) {
        for peer in peers {
            let sent = Resent {
                view,
                at: self.now,
                gap: self.retransmit_ms,
            };
            self.resent.insert((peer, kind), sent);
        }
    }

    /// Whether `kind` for `view` may go to `peer` again now; if so, notes it. The first
    /// resend of a view waits a retransmit interval after the last copy, each later one
    /// twice as long as the one before, up to the longest view timeout: a view change or a
    /// new view can take longer than the interval to cross a slow link, and each copy sent
    /// while the first still crosses queues ahead of everything behind it.
    pub(super) fn may_resend(&mut self, peer: ReplicaId, kind: Resend, view: u64) -> bool {
        let gap = match self.resent.get(&(peer, kind)) {
            Some(last) if last.view == view => {
                if self.now < last.at.saturating_add(last.gap) {
                    return false;
                }
                last.gap.saturating_mul(2).min(self.longest_timeout())
            }
            _ => self.retransmit_ms,
        };
        let sent = Resent {
            view,
            at: self.now,
            gap,
        };
        self.resent.insert((peer, kind), sent);
        true
    }

    /// `peer` restarted (it asked what it signed): it lost what it was sent, so it is served
    /// again at once, and its backoffs start over.
    pub(super) fn peer_restarted(&mut self, peer: ReplicaId) {
        self.served.remove(&peer);
        self.resent.retain(|&(to, _), _| to != peer);
    }

    /// The view timeout at its cap.
    fn longest_timeout(&self) -> u64 {
        self.view_timeout_ms
            .saturating_mul(self.max_timeout_factor)
            .max(self.retransmit_ms)
    }

    /// Whether `peer` may be served the batches it asked for now (apart from retransmissions:
    /// a new primary also sends statuses); if so, starts its interval. The interval is half
    /// the one the asker waits between asks, so a retry that comes a little early is served.
    pub(super) fn may_serve_batches(&mut self, peer: ReplicaId) -> bool {
        let interval = (self.retransmit_ms / 2).max(1);
        Self::open_interval(&mut self.batches_served, peer, self.now, interval)
    }

    /// Whether `interval` ms passed since `peer` was last served from `served`; if so, starts
    /// its next interval at `now`.
    fn open_interval(
        served: &mut BTreeMap<ReplicaId, u64>,
        peer: ReplicaId,
        now: u64,
        interval: u64,
    ) -> bool {
        if served
            .get(&peer)
            .is_some_and(|&at| now < at.saturating_add(interval))
        {
            return false;
        }
        served.insert(peer, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers() -> Timers {
        let config = Config {
            view_timeout_ms: 100,
            max_timeout_factor: 8,
            ..Config::default()
        };
        Timers::new(&config)
    }

    #[test]
    fn the_view_timeout_doubles_per_failed_view_up_to_the_cap() {
        let mut timers = timers();
        let seen: alloc::vec::Vec<u64> = (0..6)
            .map(|_| {
                let timeout = timers.timeout();
                timers.view_failed();
                timeout
            })
            .collect();
        assert_eq!(seen, [100, 200, 400, 800, 800, 800]);
        timers.enter(1_000);
        assert!(
            !timers.undelivered_new_view(),
            "the first view was not entered"
        );
        timers.begin_view();
        timers.entered_view(false);
        assert!(timers.undelivered_new_view());
        timers.enter(1_500);
        timers.made_progress(false, false, true);
        assert!(
            timers.undelivered_new_view() && timers.timeout() == 800,
            "a catch-up delivery says nothing of the view"
        );
        timers.enter(1_799);
        timers.made_progress(false, true, false);
        assert!(!timers.undelivered_new_view());
        assert_eq!(
            timers.timeout(),
            800,
            "a delivery before the view lasted its timeout keeps the backoff"
        );
        timers.enter(1_800);
        timers.made_progress(false, true, false);
        assert_eq!(
            timers.timeout(),
            100,
            "a delivery once it did resets the backoff"
        );
        timers.view_failed();
        timers.begin_view();
        timers.made_progress(false, true, true);
        assert_eq!(
            timers.timeout(),
            100,
            "so does one that leaves nothing waiting"
        );
        timers.begin_view();
        assert!(
            timers.undelivered_new_view(),
            "a new view starts undelivered"
        );
    }

    #[test]
    fn the_status_timer_starts_at_the_first_input() {
        let mut timers = timers();
        assert_eq!(timers.status_deadline(false), None);
        assert!(timers.enter(1_000));
        assert!(!timers.enter(1_010));
        let config = Config::default();
        assert_eq!(
            timers.status_deadline(false),
            Some(1_000 + config.heartbeat_ms)
        );
        assert_eq!(
            timers.status_deadline(true),
            Some(1_000 + config.retransmit_ms)
        );
    }

    #[test]
    fn the_batch_deadline_is_armed_once_and_fires_once() {
        let mut timers = timers();
        timers.enter(50);
        timers.set_batch(true);
        let deadline = timers.batch().expect("armed");
        timers.enter(deadline - 1);
        timers.set_batch(true);
        assert_eq!(timers.batch(), Some(deadline), "not pushed back");
        assert!(!timers.take_batch_due());
        timers.enter(deadline);
        assert!(timers.take_batch_due());
        assert!(!timers.take_batch_due());
    }

    #[test]
    fn view_change_messages_go_again_less_and_less_often_per_view() {
        let mut timers = timers();
        let base = Config::default().retransmit_ms;
        let (peer, other) = (ReplicaId(1), ReplicaId(2));
        timers.enter(0);
        timers.sent_to(Resend::NewView, 3, [peer, other]);
        assert!(!timers.may_resend(peer, Resend::NewView, 3), "just sent");
        assert!(
            timers.may_resend(peer, Resend::ViewChange, 3),
            "kinds back off apart"
        );
        let mut at = 0;
        for gap in [1, 2, 4, 8] {
            at += gap * base;
            timers.enter(at - 1);
            assert!(!timers.may_resend(peer, Resend::NewView, 3), "{gap}");
            timers.enter(at);
            assert!(timers.may_resend(peer, Resend::NewView, 3), "{gap}");
        }
        assert!(
            timers.may_resend(peer, Resend::NewView, 4),
            "a new view starts over"
        );
        assert!(timers.may_resend(other, Resend::NewView, 3));
        timers.peer_restarted(other);
        assert!(
            timers.may_resend(other, Resend::NewView, 3),
            "a restarted peer lost what it was sent"
        );
    }

    #[test]
    fn a_peer_is_served_once_per_interval_and_less_often_while_it_shows_the_same() {
        let mut timers = timers();
        let base = Config::default().retransmit_ms;
        timers.enter(0);
        assert!(timers.may_serve(ReplicaId(1), 7));
        assert!(!timers.may_serve(ReplicaId(1), 7));
        assert!(
            !timers.may_serve(ReplicaId(1), 8),
            "a new status waits the base interval"
        );
        assert!(timers.may_serve(ReplicaId(2), 7));
        // The same status again: served after the base interval, then after 2, 4 ... times it.
        let mut at = 0;
        for gap in [1, 2, 4, 8] {
            at += gap * base;
            timers.enter(at - 1);
            assert!(!timers.may_serve(ReplicaId(1), 7), "{gap} intervals");
            timers.enter(at);
            assert!(timers.may_serve(ReplicaId(1), 7), "{gap} intervals");
        }
        // Progress: the base interval again.
        timers.enter(at + base);
        assert!(timers.may_serve(ReplicaId(1), 9));
        timers.enter(at + 2 * base);
        assert!(timers.may_serve(ReplicaId(1), 9));
        // The doubling stops at the longest view timeout.
        let longest = Config::default().view_timeout_ms * Config::default().max_timeout_factor;
        let mut now = at + 2 * base;
        for _ in 0..20 {
            now += longest;
            timers.enter(now);
            assert!(timers.may_serve(ReplicaId(1), 9));
        }
    }
}
