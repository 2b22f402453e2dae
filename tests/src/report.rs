//! What a run found, and the trace: a digest of every output of every replica, in order.

use pbft_core::{Digest, Hasher, Message, Output, Record};

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Invariant violations, each with the virtual time it was seen.
    pub violations: Vec<String>,
    /// Requests whose result clients accepted.
    pub requests_completed: u64,
    /// Batches delivered (highest seq any honest replica delivered).
    pub batches: u64,
    /// Evidence outputs that verified.
    pub evidence: u64,
    /// Validators whose evidence committed (once each).
    pub convictions: u64,
    /// For each conviction: virtual ms from the offender's first conflicting statement (or
    /// the first report of it, for a Twins pair) to its evidence's first commit.
    pub conviction_ms: Vec<u64>,
    /// Validators that sent conflicting statements no honest replica ever held both of.
    pub undetected: u64,
    /// The highest epoch an honest replica entered (0: the set never changed).
    pub epochs: u64,
    /// Convicted validators out of the last epoch's set.
    pub removed: u64,
    /// Reconfigurations that took effect ([`crate::Scenario::reconfiguration`]).
    pub reconfigurations: u64,
    /// Validators that joined the set by state transfer.
    pub joined: u64,
    /// Messages put on the simulated network.
    pub messages: u64,
    /// Virtual time at the end, ms.
    pub virtual_ms: u64,
    /// Views honest replicas entered, summed.
    pub views_changed: u64,
    /// When the primary crashed at a time it was the primary: virtual ms from the crash to
    /// the first batch an honest replica committed in a later view.
    pub recovery_ms: Option<u64>,
    /// Validators restarted from their persisted records.
    pub restarts: u64,
    /// Restarts from an old copy of the records and store ([`crate::Kind::Rollback`]).
    pub rollbacks: u64,
    /// For each of them, how many seqs the copy's stable checkpoint was behind the one the
    /// validator had reached when it crashed.
    pub rolled_back_seqs: Vec<u64>,
    /// Restarts whose rollback protection found statements the log had lost.
    pub rollbacks_detected: u64,
    /// Checkpoint states fetched and installed.
    pub state_transfers: u64,
    /// Re-proposed batches that new primaries fetched before they could sign their new views
    /// (honest validators, since their last restart).
    pub batches_fetched: u64,
    /// When the first state was installed, virtual ms.
    pub first_install_ms: Option<u64>,
    /// When the last request completed, virtual ms.
    pub last_completed_ms: u64,
    /// State chunks a drip-feeding validator ([`crate::Fault::DripFeed`]) sent.
    pub drip_chunks: u64,
    /// Replicas that found their state at a stable checkpoint differed from the quorum's
    /// (`Output::StateDiverged`), each then fetching the stable state.
    pub state_repairs: u64,
    /// Deliveries at honest replicas.
    pub deliveries: u64,
    /// Of those, the ones whose QC came by the fast path.
    pub fast_deliveries: u64,
    /// For each honest delivery of a batch proposed in the view it committed in: the time from
    /// its first signed pre-prepare to the delivery, in message delays (the scenario's mean
    /// one-way delay). A replica that restarted delivers again, late; medians are robust to it.
    pub commit_delays: Vec<f64>,
    /// With clients behind a gateway: the requests it answered with f + 1 matching replies,
    /// the requests it sent again to every validator, and the replies it refused.
    pub gateway: Option<(u64, u64, u64)>,
    /// Requests no client sent that executed on a listed gateway's attestation (the rogue
    /// gateway's forgeries, in gateway-attested mode), counted once per committed seq.
    pub attested_forgeries: u64,
    /// Digest of every output of every node, in order: equal across runs of one seed.
    pub trace: Digest,
}

/// Adds validator `index`'s `output` to the run's `trace`.
pub(crate) fn observe(trace: &mut Hasher, index: usize, output: &Output) {
    trace.u64(index as u64);
    match output {
        Output::Persist(Record::Signed(vote)) => {
            trace.bytes(&Message::Vote(vote.clone()).encode());
        }
        Output::Persist(Record::ViewChange(change)) => {
            trace.u64(change.view);
        }
        Output::Persist(Record::NewView(new_view)) => {
            trace.u64(new_view.view);
        }
        Output::Persist(Record::Accepted(proposal, _)) => {
            trace.bytes(&Message::Vote(proposal.clone()).encode());
        }
        Output::Persist(Record::Prepared(prepared, _)) => {
            trace.u64(prepared.proposal.seq);
        }
        Output::Persist(Record::Stable(checkpoint)) => {
            trace.u64(checkpoint.seq);
        }
        Output::Persist(Record::Committed(certificate, _)) => {
            trace.u64(certificate.seq);
        }
        Output::Send { bytes, .. } => {
            trace.bytes(bytes);
        }
        Output::Deliver(delivery) => {
            trace.u64(delivery.seq).digest(&delivery.certificate.digest);
        }
        Output::Evidence(evidence) => {
            trace.u64(evidence.second.seq);
        }
        Output::Install(install) => {
            trace.u64(install.seq).bytes(&install.snapshot);
        }
        Output::StateDiverged { seq, own, stable } => {
            trace.u64(*seq).digest(own).digest(stable);
        }
        Output::Persist(Record::Scheduled { seq, next }) => {
            trace
                .u64(*seq)
                .u64(next.boundary)
                .u64(next.validators.len() as u64);
        }
        Output::Persist(Record::EpochStarted(change)) | Output::EpochStarted(change) => {
            trace.u64(change.epoch()).digest(&change.checkpoint.digest);
        }
        Output::Persist(Record::Evidence(evidence)) => {
            trace
                .u64(evidence.epoch)
                .u64(u64::from(evidence.offender().0));
        }
        Output::Persist(Record::Fenced(fence, lost)) => {
            let view = fence.view.map_or(0, |view| view + 1);
            trace.u64(view).u64(fence.seq).u64(lost.len() as u64);
        }
        Output::Recovered(report) => {
            trace
                .u64(report.answered as u64)
                .u64(report.lost as u64)
                .u64(report.closed_through_view.unwrap_or(0));
        }
        other => panic!("the simulator does not trace {other:?}"),
    }
}
