//! Each validator peer's share of this replica's signature checks on view-change traffic: how
//! many it may still make the replica run, refilled by the replica's own clock (the `now` of
//! its inputs).
//!
//! What a peer is charged, and why that is enough (the rest of the bound is in the order of
//! the checks, see [`crate::view_change`]):
//!
//! - the own signature of each view change it sends. A validator may sign view changes for
//!   any views it likes, each valid, each a check; an honest one signs one per view it moves
//!   to, and views last at least the view timeout, so it spends a few a second at most.
//! - every check of a view change or new view it sent that fails. An honest peer sends only
//!   what it checked itself (its own view change, a new view it built or entered), and every
//!   replica reaches the same verdict on the same bytes, so an honest peer never fails one.
//!
//! A valid new view is not charged: it moves the replica into a view a quorum asked for, which
//! happens once per view. Nor are the certificates of a valid view change, which only the
//! primary building a new view from it checks, once per view it leads.
//!
//! No bound on how far ahead a view change may be is needed on top of this: one ahead of
//! every other costs one check like any other, and refusing it would leave a replica that was
//! cut off for long unable to follow the f + 1 peers that moved on.

use alloc::collections::BTreeMap;

use crate::config::ReplicaId;

/// Signature checks each peer may still cause, in thousandths of a check so that a refill of
/// a few checks a second is exact at a millisecond.
#[derive(Debug)]
pub(super) struct CheckBudget {
    /// Checks per second each peer gets back; also the most it may hold (one second's worth).
    per_sec: u64,
    /// Each peer's share, from the first time it was asked about.
    peers: BTreeMap<ReplicaId, Share>,
}

#[derive(Clone, Copy, Debug)]
struct Share {
    /// Thousandths of a check; below zero after a failed check larger than what was left.
    milli: i64,
    /// When `milli` was last refilled (ms).
    at: u64,
}

impl CheckBudget {
    /// Shares of `per_sec` checks a second, each starting full.
    pub(super) fn new(per_sec: u64) -> Self {
        CheckBudget {
            per_sec,
            peers: BTreeMap::new(),
        }
    }

    fn capacity(&self) -> i64 {
        i64::try_from(self.per_sec.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// `peer`'s share at `now` (ms), refilled for the time since it was last looked at.
    fn share(&mut self, peer: ReplicaId, now: u64) -> &mut Share {
        let capacity = self.capacity();
        let per_sec = self.per_sec;
        let share = self.peers.entry(peer).or_insert(Share {
            milli: capacity,
            at: now,
        });
        // `per_sec` checks per 1000 ms is `per_sec` thousandths per ms.
        let earned = now.saturating_sub(share.at).saturating_mul(per_sec);
        let earned = i64::try_from(earned).unwrap_or(i64::MAX);
        share.milli = share.milli.saturating_add(earned).min(capacity);
        share.at = share.at.max(now);
        share
    }

    /// Whether `peer` may make this replica check a signature at `now`: its share holds at
    /// least one whole check.
    pub(super) fn allows(&mut self, peer: ReplicaId, now: u64) -> bool {
        self.share(peer, now).milli >= 1000
    }

    /// `peer` made this replica check `signatures` signatures at `now`. Its share may go below
    /// zero (the checks already ran): the peer then waits until the refill brings it back.
    pub(super) fn charge(&mut self, peer: ReplicaId, signatures: u64, now: u64) {
        let cost = i64::try_from(signatures.saturating_mul(1000)).unwrap_or(i64::MAX);
        let share = self.share(peer, now);
        share.milli = share.milli.saturating_sub(cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: ReplicaId = ReplicaId(1);

    #[test]
    fn a_share_holds_one_second_and_refills_with_time() {
        let mut budget = CheckBudget::new(100);
        for _ in 0..100 {
            assert!(budget.allows(PEER, 5));
            budget.charge(PEER, 1, 5);
        }
        assert!(!budget.allows(PEER, 5), "a second's worth spent at once");
        assert!(budget.allows(ReplicaId(2), 5), "other peers keep theirs");
        assert!(!budget.allows(PEER, 14), "9 ms bring back 0.9 of a check");
        assert!(budget.allows(PEER, 15), "10 ms bring back one");
        assert!(budget.allows(PEER, 1_000_000));
        for _ in 0..100 {
            budget.charge(PEER, 1, 1_000_000);
        }
        assert!(
            !budget.allows(PEER, 1_000_000),
            "idle time saves at most a second's worth"
        );
    }

    #[test]
    fn a_failed_check_larger_than_the_share_is_paid_back_before_the_next() {
        let mut budget = CheckBudget::new(100);
        assert!(budget.allows(PEER, 0));
        budget.charge(PEER, 5_000, 0);
        // 4,900 checks in debt: 49 s at 100 a second.
        assert!(!budget.allows(PEER, 49_000));
        assert!(budget.allows(PEER, 49_010));
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let mut budget = CheckBudget::new(100);
        budget.charge(PEER, 100, 10_000);
        assert!(!budget.allows(PEER, 0));
        assert!(!budget.allows(PEER, 10_000));
        assert!(budget.allows(PEER, 10_010));
    }
}
