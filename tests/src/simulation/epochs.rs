//! The epochs a run goes through: each change a validator enters is checked against the set
//! of the epoch it ends and handed to the clients and the gateway, which check it again; at
//! the end, every validator convicted by committed evidence is out of the set of every honest
//! replica that passed the boundary, and no scheduled change is left waiting.

use pbft_core::{EpochChange, ValidatorSet, verify_epoch_change};

use super::{NodeId, Simulation};
use crate::chain;

impl Simulation {
    /// Validator `index` entered the epoch `change` starts.
    pub(super) fn epoch_started(&mut self, index: NodeId, change: &EpochChange) {
        let honest = self.validators[index].checked();
        let Some(previous) = self.sets.get(&change.state.epoch).cloned() else {
            if honest {
                self.violation(format!(
                    "replica {index} entered epoch {} from an epoch no replica entered",
                    change.epoch()
                ));
            }
            return;
        };
        let set = match verify_epoch_change(&chain(), &previous, change) {
            Ok(set) => set,
            Err(err) => {
                if honest {
                    self.violation(format!(
                        "replica {index} entered epoch {} on a change that does not verify: {err}",
                        change.epoch()
                    ));
                }
                return;
            }
        };
        match self.sets.get(&change.epoch()) {
            Some(known) if !same_set(known, &set) => {
                self.violation(format!(
                    "two validator sets for epoch {}: agreement on the set failed",
                    change.epoch()
                ));
                return;
            }
            Some(_) => return,
            None => {}
        }
        self.sets.insert(change.epoch(), set);
        self.report.epochs = self.report.epochs.max(change.epoch());
        self.operator_sees(change);
        for client in &mut self.clients {
            if client.client.validators().epoch() == change.state.epoch
                && let Err(err) = client.client.enter_epoch(change)
            {
                let line = format!("a client refused a valid epoch change: {err}");
                self.report.violations.push(line);
            }
        }
        if let Some(sim) = self.gateway.as_mut()
            && sim.gateway.validators().epoch() == change.state.epoch
            && let Err(err) = sim.gateway.enter_epoch(change)
        {
            let line = format!("the gateway refused a valid epoch change: {err}");
            self.report.violations.push(line);
        }
    }

    /// Every validator evidence convicted is out of the set of each honest replica's epoch
    /// after the conviction's, and no honest replica ends with a change still scheduled.
    pub(super) fn check_removals(&mut self) {
        let convicted: Vec<(u16, u64)> = self
            .convicted_in
            .iter()
            .map(|(offender, epoch)| (*offender, *epoch))
            .collect();
        for index in 0..self.validators.len() {
            let node = &self.validators[index];
            if !node.held_to_liveness() {
                continue;
            }
            if let Some(next) = node.replica.scheduled_epoch() {
                let boundary = next.boundary;
                self.violation(format!(
                    "replica {index} ends the run with a change of the set still scheduled at seq {boundary}"
                ));
            }
            let set = self.validators[index].replica.validators().clone();
            for &(offender, epoch) in &convicted {
                let key = self.keys[usize::from(offender)];
                if set.epoch() > epoch && set.id_of(&key).is_some() {
                    self.violation(format!(
                        "validator {offender}, convicted in epoch {epoch}, is still in replica {index}'s set of epoch {}",
                        set.epoch()
                    ));
                }
            }
        }
        self.report.removed = self
            .convicted_in
            .keys()
            .filter(|offender| {
                let key = self.keys[usize::from(**offender)];
                self.sets
                    .values()
                    .last()
                    .is_some_and(|set| set.id_of(&key).is_none())
            })
            .count() as u64;
    }
}

/// Whether two sets are the same validators in the same order.
fn same_set(a: &ValidatorSet, b: &ValidatorSet) -> bool {
    a.public_keys().eq(b.public_keys())
}
