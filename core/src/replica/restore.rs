//! Coming back after a crash: what must be persisted, and how a replica is rebuilt from it.
//!
//! A replica persists (as [`Record`]s, each before the message carrying its signature leaves)
//! every vote it signs, every prepared certificate it assembles, every stable checkpoint, its
//! view changes and the new views it enters. [`Replica::restore`] rebuilds from those: the
//! view it was in, the prepared certificates its next view change must carry, and the index
//! of signed statements that [`Replica::sign`] consults, so the restored replica can repeat a
//! vote it cast but never sign a different one. What it executed is not restored: its
//! application starts empty and catches up from peers like any replica that fell behind.

use alloc::vec::Vec;

use super::{Mode, Record, Replica};
use crate::config::{Config, ConfigError, ValidatorSet};
use crate::crypto::Keypair;
use crate::message::Phase;

impl Replica {
    /// A replica rebuilt from every record it persisted (in any order; repeats are fine).
    pub fn restore(
        config: Config,
        validators: ValidatorSet,
        keypair: Keypair,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Replica, ConfigError> {
        let mut replica = Replica::new(config, validators, keypair)?;
        let mut view_change_view = None;
        let mut in_view = 0;
        for record in records {
            match record {
                Record::Signed(vote) => {
                    if vote.phase != Phase::Checkpoint {
                        in_view = in_view.max(vote.view);
                    }
                    replica
                        .signed
                        .entry((vote.phase, vote.view, vote.seq))
                        .or_insert(vote);
                }
                Record::Prepared(prepared) => {
                    let view = prepared.proposal.view;
                    in_view = in_view.max(view);
                    let slot = replica.log.entry(prepared.proposal.seq).or_default();
                    if slot
                        .prepared
                        .as_ref()
                        .is_none_or(|p| p.proposal.view < view)
                    {
                        slot.prepared = Some(prepared);
                    }
                }
                Record::Stable(checkpoint) => {
                    if checkpoint.seq > replica.stable.seq {
                        replica.stable = checkpoint;
                    }
                }
                Record::ViewChange(change) => {
                    if view_change_view.is_none_or(|v| v < change.view) {
                        view_change_view = Some(change.view);
                        replica.view_changes.insert(replica.id, change);
                    }
                }
                Record::NewView(new_view) => {
                    in_view = in_view.max(new_view.view);
                    // As that view's primary it signed the re-proposals inside.
                    for proposal in new_view
                        .proposals
                        .iter()
                        .filter(|p| p.replica == replica.id)
                    {
                        replica
                            .signed
                            .entry((proposal.phase, proposal.view, proposal.seq))
                            .or_insert_with(|| proposal.clone());
                    }
                    if replica
                        .new_view
                        .as_ref()
                        .is_none_or(|known| known.view < new_view.view)
                    {
                        replica.new_view = Some(new_view);
                    }
                }
            }
        }
        // The last view it entered, unless it signed a view change beyond it since.
        replica.view = in_view;
        if let Some(view) = view_change_view.filter(|&v| v > in_view) {
            replica.view = view;
            replica.mode = Mode::ViewChange { since: 0 };
        }
        let view = replica.view;
        let stable = replica.stable.seq;
        replica.log.retain(|&seq, _| seq > stable);
        replica.signed.retain(|&(phase, signed_view, seq), _| {
            seq > stable && (phase == Phase::Checkpoint || signed_view >= view)
        });
        // As primary, never propose again at a seq it proposed before the crash.
        let proposed = replica
            .signed
            .keys()
            .filter(|(phase, signed_view, _)| *phase == Phase::PrePrepare && *signed_view == view)
            .map(|&(_, _, seq)| seq)
            .max()
            .unwrap_or(0);
        replica.next_seq = proposed.max(stable) + 1;
        Ok(replica)
    }

    /// The records a restart needs now, to replace the host's log with (after a stable
    /// checkpoint, everything else is garbage): the stable checkpoint, the view, the prepared
    /// certificates above the checkpoint and the votes signed in this view.
    pub fn durable_records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        if self.stable.seq > 0 {
            records.push(Record::Stable(self.stable.clone()));
        }
        if let Some(new_view) = &self.new_view {
            records.push(Record::NewView(new_view.clone()));
        }
        if let Some(change) = self.view_changes.get(&self.id) {
            records.push(Record::ViewChange(change.clone()));
        }
        for (_, slot) in self.log.range(self.stable.seq + 1..) {
            if let Some(prepared) = &slot.prepared {
                records.push(Record::Prepared(prepared.clone()));
            }
        }
        records.extend(self.signed.values().cloned().map(Record::Signed));
        records
    }
}
