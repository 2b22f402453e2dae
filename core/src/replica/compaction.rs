//! Compaction: the records that replace a host's log after a stable checkpoint.

use alloc::vec::Vec;

use super::Replica;
use super::output::Record;

impl Replica {
    /// The records a restart needs now, to replace the host's log with (after a stable
    /// checkpoint, everything else is garbage): the stable checkpoint, the view, the prepared
    /// certificates and accepted proposals (with their batches) above the checkpoint, the kept
    /// batches, the votes signed in this view, the latest vote of the prepare phase at each
    /// seq, the evidence not yet committed, and the fence rollback protection set.
    pub fn durable_records(&self) -> Vec<Record> {
        let epochs = self
            .epochs
            .changes
            .iter()
            .cloned()
            .map(Record::EpochStarted);
        let mut records: Vec<Record> = epochs.chain(self.evidence.pending_records()).collect();
        records.extend(self.epochs.schedule.clone().map(|next| Record::Scheduled {
            seq: self.epochs.scheduled_at,
            next,
        }));
        // A later epoch's checkpoint it fetches to jump to is not of its epoch (a restart
        // comes back in its own): the certificate that ended its epoch stands in for it.
        let stable = match self.epochs.ahead.first() {
            Some(first) if self.checkpoints.stable().seq > first.boundary() => &first.checkpoint,
            _ => self.checkpoints.stable(),
        };
        if stable.seq > 0 {
            records.push(Record::Stable(stable.clone()));
        }
        if let Some(new_view) = &self.new_view {
            records.push(Record::NewView(new_view.clone()));
        }
        if let Some(held) = self.view_changes.get(&self.id) {
            records.push(Record::ViewChange(held.change.clone()));
        }
        for (_, slot) in self.log.range(stable.seq + 1..) {
            let prepared_digest = slot.prepared.as_ref().map(|p| p.proposal.digest);
            if let Some(prepared) = &slot.prepared {
                let batch = slot
                    .batch
                    .as_ref()
                    .filter(|_| slot.digest == prepared_digest);
                records.push(Record::Prepared(prepared.clone(), batch.cloned()));
            }
            // The batch of a proposal this replica accepted but did not prepare: it may have
            // voted for it.
            if let (Some(proposal), Some(batch)) = (&slot.proposal, &slot.batch)
                && slot.digest == Some(proposal.digest)
                && prepared_digest != slot.digest
            {
                records.push(Record::Accepted(proposal.clone(), batch.clone()));
            }
        }
        for (proposal, batch) in self.kept.values() {
            records.push(Record::Accepted(proposal.clone(), batch.clone()));
        }
        records.extend(self.signer.votes().cloned().map(Record::Signed));
        if let Some(fence) = self.signer.fence() {
            records.push(Record::Fenced(
                fence,
                self.signer.lost_votes().cloned().collect(),
            ));
        }
        records
    }
}
