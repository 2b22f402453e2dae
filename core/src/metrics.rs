//! Counters the host reads to export metrics; the core only increments them.

use alloc::collections::BTreeMap;

/// What a replica has done and refused, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Messages handed to `handle_message`.
    pub messages_received: u64,
    /// Inputs rejected, by [`crate::Error::label`].
    pub rejected: BTreeMap<&'static str, u64>,
    /// Signatures checked (each signature of a batch check counts once).
    pub signatures_verified: u64,
    /// Of those, the ones checked in a batch of several.
    pub signatures_batch_verified: u64,
    /// Client signatures not checked again because this replica had verified the request,
    /// with the same signature, before: on arrival (then found in an accepted pre-prepare),
    /// in a pre-prepare or a batch it proposed (then found in a copy the client sent again,
    /// or proposed again). The signature cache of the reference design; with n validators
    /// and every request sent to all of them once, a backup's hit rate is about this over
    /// the requests it saw committed (retransmitted copies count too, so it may pass 1).
    pub signatures_cached: u64,
    /// Signatures made.
    pub signatures_created: u64,
    /// Batches delivered to the host.
    pub batches_committed: u64,
    /// Batches this replica committed on the fast path (all n votes of the prepare phase in,
    /// before a quorum of commits).
    pub fast_commits: u64,
    /// Requests in delivered batches.
    pub requests_committed: u64,
    /// Requests the exactly-once table let execute.
    pub requests_executed: u64,
    /// Requests in delivered batches skipped as already executed.
    pub requests_skipped: u64,
    /// Equivocations reported as evidence: found here or received, once per offender and
    /// phase.
    pub evidence_reported: u64,
    /// Pieces of evidence in delivered batches.
    pub evidence_committed: u64,
    /// Committed convictions that changed the scheduled validator set ([`crate::NextEpoch`]).
    pub validators_convicted: u64,
    /// Committed reconfigurations the governance rule accepted ([`crate::Reconfiguration`]).
    pub reconfigurations_scheduled: u64,
    /// Epochs this replica entered ([`crate::EpochChange`]).
    pub epochs_entered: u64,
    /// Encoded bytes handed to the host for sending (a broadcast counts once per peer).
    pub bytes_sent: u64,
    /// New views this replica entered.
    pub views_changed: u64,
    /// Time spent between sending a view change and entering the new view, in ms.
    pub view_change_ms: u64,
    /// View-change timeouts that fired (a request or proposal not committed in time, or a
    /// new view that did not come).
    pub timeouts_fired: u64,
    /// Checkpoints that became stable here.
    pub checkpoints_stable: u64,
    /// Status messages sent (retransmission requests and heartbeats).
    pub status_sent: u64,
    /// Messages re-sent to peers that reported lacking them.
    pub retransmitted: u64,
    /// Batches received with a QC from a peer while catching up.
    pub batches_caught_up: u64,
    /// Re-proposed batches this replica, as a new primary, fetched from peers before it could
    /// sign its new view (it signs no re-proposal without the batch).
    pub batches_fetched: u64,
    /// Stable checkpoints whose state this replica could not take as its own: its own digest
    /// there differed (each one an [`crate::Output::StateDiverged`], then a state transfer of
    /// the stable state), or the fetched exactly-once table did not decode.
    pub checkpoint_mismatches: u64,
    /// Checkpoint states fetched and installed because this replica was too far behind.
    pub state_transfers: u64,
    /// Votes not signed because this replica had signed another digest for the same
    /// statement (before a restart): each one a double signature avoided.
    pub refused_to_equivocate: u64,
    /// Signatures withheld by rollback protection: while peers had not said what they hold
    /// signed by this replica, or in views it signed statements in that its log had lost.
    pub withheld_in_recovery: u64,
    /// Signed refusals sent to clients ([`crate::Refusal`]), within their budget.
    pub refusals_signed: u64,
}

impl Metrics {
    /// Total rejected inputs, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}
