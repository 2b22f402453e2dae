//! The operator of a reconfiguration run ([`Scenario::reconfiguration`]): it submits each
//! reconfiguration as client 0's next request, approved by a quorum of the epoch that client
//! is in (again, for the next epoch, when one started before it committed), waits until the
//! epoch it scheduled starts, and starts each validator the set gains with
//! [`Replica::join`] from the chain. At the end every reconfiguration must have taken effect
//! and every honest replica must hold the set they lead to, less the convicted.
//!
//! [`Scenario::reconfiguration`]: crate::Scenario::reconfiguration

use std::collections::{BTreeSet, VecDeque};

use pbft_core::{
    Decision, EpochChange, JoinError, Keypair, PublicKey, Reconfiguration, Refusal, Replica,
    SetChange, approve,
};

use super::{Event, NodeId, Simulation};
use crate::{Change, Reconfig, chain};

/// Where the operator stands.
#[derive(Default)]
pub(super) struct Operator {
    /// The reconfigurations still to take effect, the first one next.
    pub(super) pending: VecDeque<Reconfig>,
    /// The first one is due: client 0 submits it with its next request.
    due: bool,
    /// Client 0's outstanding request is the first one.
    in_flight: bool,
    /// It committed and scheduled this epoch, which has not started yet.
    awaiting: Option<u64>,
    /// Joins scheduled that have not happened yet.
    pub(super) joins_due: usize,
    /// The chain of changes, as replicas first entered each epoch: what joiners start from.
    pub(super) changes: Vec<EpochChange>,
}

impl Operator {
    /// An operator that will submit `reconfigurations` in order.
    pub(super) fn new(reconfigurations: &[Reconfig]) -> Self {
        Operator {
            pending: reconfigurations.iter().cloned().collect(),
            ..Operator::default()
        }
    }
}

impl Simulation {
    /// The first reconfiguration is due.
    pub(super) fn operator_due(&mut self) {
        if self.operator.pending.is_empty() || self.operator.in_flight {
            return;
        }
        self.operator.due = true;
        if self.clients[0].outstanding.is_none() {
            self.next_request(0);
        }
    }

    /// The operation client 0 sends next, if it is the operator's reconfiguration: approved
    /// for the client's next request by the first quorum of the epoch the client is in.
    pub(super) fn operator_op(&mut self, index: usize) -> Option<Vec<u8>> {
        if index != 0 || !self.operator.due {
            return None;
        }
        let reconfig = self.operator.pending.front()?.clone();
        let client = &self.clients[0].client;
        let set = client.validators().clone();
        let (key, client_seq, epoch) = (client.public_key(), client.next_seq(), set.epoch());
        let changes: Vec<SetChange> = reconfig
            .changes
            .iter()
            .map(|c| self.set_change(c))
            .collect();
        let approvals = set
            .public_keys()
            .take(set.quorum())
            .filter_map(|signer| {
                let keypair = self.keypair_of(&signer)?;
                Some(approve(
                    &keypair,
                    &chain(),
                    &key,
                    client_seq,
                    epoch,
                    &changes,
                ))
            })
            .collect();
        self.operator.due = false;
        self.operator.in_flight = true;
        let reconfiguration = Reconfiguration {
            epoch,
            changes,
            approvals,
        };
        Some(reconfiguration.encode_op())
    }

    /// Client 0's outstanding request completed with `result`: if it was the operator's,
    /// the decision says what comes next.
    /// Returns whether it was.
    pub(super) fn operator_answered(&mut self, index: usize, result: &[u8]) -> bool {
        if index != 0 || !self.operator.in_flight {
            return false;
        }
        self.operator.in_flight = false;
        match Decision::decode(result) {
            // The epoch may have started before the reply came.
            Some(Decision::Scheduled { epoch }) if self.sets.contains_key(&epoch) => {
                self.took_effect();
            }
            Some(Decision::Scheduled { epoch }) => self.operator.awaiting = Some(epoch),
            // Approved for an epoch that ended before it committed: approve it again.
            Some(Decision::Refused(Refusal::WrongEpoch { .. })) => {
                self.schedule(10, Event::Operator);
            }
            other => {
                self.violation(format!(
                    "the operator's reconfiguration was not scheduled: {other:?}"
                ));
                self.operator.pending.pop_front();
            }
        }
        true
    }

    /// A replica entered epoch `change.epoch()` first: the operator goes on if that is the
    /// epoch it awaited, and each validator the new set gains joins a drawn time later.
    pub(super) fn operator_sees(&mut self, change: &EpochChange) {
        if self.scenario.spares == 0 {
            return;
        }
        self.operator.changes.push(change.clone());
        if self.operator.awaiting == Some(change.epoch()) {
            self.took_effect();
        }
        let joining: Vec<NodeId> = change
            .validators()
            .iter()
            .filter_map(|key| self.node_of(key))
            .filter(|&node| self.validators[node].standby)
            .collect();
        for node in joining {
            let wait = self.rng.range(0, 300);
            self.operator.joins_due += 1;
            self.schedule(wait, Event::Join { node });
        }
    }

    /// The first reconfiguration took effect: the next one is due after its wait.
    fn took_effect(&mut self) {
        self.operator.awaiting = None;
        self.operator.pending.pop_front();
        self.report.reconfigurations += 1;
        if let Some(next) = self.operator.pending.front() {
            let after = next.after_ms;
            self.schedule(after, Event::Operator);
        }
    }

    /// Validator `node` joins with the chain so far, unless it is in the set no more.
    pub(super) fn join(&mut self, node: NodeId) {
        self.operator.joins_due -= 1;
        if !self.validators[node].standby {
            return;
        }
        let keypair = Keypair::from_seed(&self.validators[node].keypair.seed());
        let changes = self.operator.changes.clone();
        match Replica::join(self.config.clone(), self.set.clone(), keypair, changes) {
            Ok(replica) => {
                let joined = &mut self.validators[node];
                joined.replica = replica;
                joined.standby = false;
                joined.down = false;
                self.report.joined += 1;
                self.drain(node);
            }
            // Removed again before it joined.
            Err(JoinError::NotInSet { .. }) => {}
            Err(err) => self.violation(format!("validator {node} cannot join: {err}")),
        }
    }

    /// Every reconfiguration took effect, and every honest replica in the set holds the
    /// set they lead to, less the validators evidence convicted.
    pub(super) fn check_reconfigured(&mut self) {
        if self.scenario.reconfigurations.is_empty() {
            return;
        }
        if let Some(left) = self.operator.pending.front() {
            let what = format!("a reconfiguration never took effect: {:?}", left.changes);
            self.violation(what);
            return;
        }
        let mut expected: Vec<PublicKey> = self.set.public_keys().collect();
        for reconfig in &self.scenario.reconfigurations {
            for change in &reconfig.changes {
                match self.set_change(change) {
                    SetChange::Add(key) => expected.push(key),
                    SetChange::Remove(key) => expected.retain(|k| *k != key),
                    SetChange::Rotate { old, new } => {
                        expected
                            .iter_mut()
                            .filter(|k| **k == old)
                            .for_each(|k| *k = new);
                    }
                    // The simulated operator changes validators only (gateway changes are
                    // tested on replicas in memory, core/tests/epochs.rs).
                    SetChange::AddGateway(_) | SetChange::RemoveGateway(_) => {}
                }
            }
        }
        let convicted: Vec<PublicKey> = self
            .convicted_in
            .keys()
            .map(|offender| self.keys[usize::from(*offender)])
            .collect();
        let expected: BTreeSet<PublicKey> = expected
            .into_iter()
            .filter(|key| !convicted.contains(key))
            .collect();
        for key in &expected {
            if let Some(node) = self.node_of(key)
                && self.validators[node].standby
            {
                self.violation(format!("validator {node} of the final set never joined"));
            }
        }
        for node in 0..self.validators.len() {
            if !self.validators[node].held_to_liveness() {
                continue;
            }
            let held: BTreeSet<PublicKey> = self.validators[node]
                .replica
                .validators()
                .public_keys()
                .collect();
            if held != expected {
                self.violation(format!(
                    "replica {node} ends with {} validators, not the {} the reconfigurations lead to",
                    held.len(),
                    expected.len()
                ));
            }
        }
    }

    /// The change of keys a scenario's change of indices names.
    fn set_change(&self, change: &Change) -> SetChange {
        match *change {
            Change::Add(index) => SetChange::Add(self.keys[index]),
            Change::Remove(index) => SetChange::Remove(self.keys[index]),
            Change::Rotate { old, new } => SetChange::Rotate {
                old: self.keys[old],
                new: self.keys[new],
            },
        }
    }

    /// The node that runs `key` (the first, for a twinned key).
    fn node_of(&self, key: &PublicKey) -> Option<NodeId> {
        let index = self.keys.iter().position(|k| k == key)?;
        self.instances_of(index).next()
    }

    /// A copy of the key pair behind `key`: the simulation holds every validator's.
    fn keypair_of(&self, key: &PublicKey) -> Option<Keypair> {
        let node = self.node_of(key)?;
        Some(Keypair::from_seed(&self.validators[node].keypair.seed()))
    }
}
