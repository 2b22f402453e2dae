//! The decisions that change the next epoch's set, made when a batch is delivered: the
//! reconfigurations its requests carry ([`crate::governance`]) and the convictions its
//! evidence proves ([`crate::Config::slash_equivocators`]). Each is made from the committed
//! batch alone, so every correct replica makes the same; the first of an epoch fixes the
//! boundary ([`crate::boundary_after`]), later ones join the same change.

use alloc::vec::Vec;

use super::Replica;
use super::output::Record;
use super::restore::ExecutedState;
use crate::certificate::CertificateError;
use crate::config::{Config, ConfigError, ValidatorSet};
use crate::crypto::{Keypair, PublicKey, VerifyingKey};
use crate::epoch::{EpochChange, NextEpoch, boundary_after, verify_epoch_change};
use crate::governance::{Decision, Members, Reconfiguration, Refusal, apply, fits};
use crate::statement::{Evidence, Request};

/// Why a validator cannot join at the epoch a chain of changes leads to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// A change of the chain does not verify with the set before it.
    #[error("epoch change {index} of the chain does not verify: {source}")]
    Chain {
        /// Its position in the chain.
        index: usize,
        /// Why.
        source: CertificateError,
    },
    /// The key is not in the set the chain leads to: the change that adds it has not taken
    /// effect yet (wait for its boundary), or the chain is not the newest.
    #[error("this key is not in the validator set of epoch {epoch}, where the chain leads")]
    NotInSet {
        /// The epoch the chain leads to.
        epoch: u64,
    },
    /// The config does not hold for the set.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Replica {
    /// A validator that joins the network in the epoch `changes` lead to (from `genesis`,
    /// oldest first; any validator's [`Replica::epoch_changes`]), its key added or rotated
    /// in by a [`crate::Reconfiguration`]. It starts with nothing executed and nothing signed:
    /// it fetches the state of its epoch's newest stable checkpoint from its peers, then
    /// orders with them.
    ///
    /// The changes come out first as [`Record::EpochStarted`] outputs to persist: a restart
    /// restores from the log as any validator's. A replica that starts with nothing signed
    /// cannot know what its key signed before: join a key once, on an empty data dir, and
    /// restore it from its log after (a validator whose log is lost may double-sign, joined
    /// or not; the rollback protection of issue 16 is what closes that).
    ///
    /// # Errors
    ///
    /// [`JoinError`]: a change that does not verify, a key not in the last set, or a config
    /// that does not hold for it.
    pub fn join(
        config: Config,
        genesis: ValidatorSet,
        keypair: Keypair,
        changes: Vec<EpochChange>,
    ) -> Result<Replica, JoinError> {
        let mut set = genesis.clone();
        for (index, change) in changes.iter().enumerate() {
            set = verify_epoch_change(&config.chain_id, &set, change)
                .map_err(|source| JoinError::Chain { index, source })?;
        }
        if set.id_of(&keypair.public_key()).is_none() {
            return Err(JoinError::NotInSet { epoch: set.epoch() });
        }
        let records: Vec<Record> = changes.into_iter().map(Record::EpochStarted).collect();
        let mut replica = Replica::restore(
            config,
            genesis,
            keypair,
            records.clone(),
            ExecutedState::default(),
        )?;
        for record in records {
            replica.outbox.persist(record);
        }
        Ok(replica)
    }

    /// Decides what the batch delivered at `seq` does to the next epoch's set: the tagged
    /// `requests` (fresh ones, in order) and the `evidence`. Returns each request's result,
    /// the encoded [`Decision`]. A change is recorded before the delivery.
    ///
    /// A batch of an ended epoch (at or below this epoch's start, delivered again after a
    /// restart whose store was behind it) changes nothing: its decisions are in the change
    /// that started this epoch. Its results are decided again for its replies, per request
    /// (see the comment on `replay` below).
    pub(super) fn decide_next_set(
        &mut self,
        seq: u64,
        requests: &[&Request],
        evidence: &[Evidence],
    ) -> Vec<Vec<u8>> {
        let slash = self.config.slash_equivocators && !evidence.is_empty();
        if requests.is_empty() && !slash {
            return Vec::new();
        }
        let set = self.set_at(seq);
        // A batch of an ended epoch, delivered again: the schedule it joined is gone, so its
        // decisions are made per request (a refusal of the sum made the first time differs,
        // the state at the boundary then does, and the replica fetches the quorum's).
        let replay = seq <= self.validators.base().0;
        let members = Members {
            validators: set.public_keys().collect(),
            gateways: self.gateways_of_epoch(set.epoch()).to_vec(),
        };
        let current = Members {
            validators: self.validators.public_keys().collect(),
            gateways: self.attesting_gateways().to_vec(),
        };
        let mut next = self.epochs.schedule.as_ref().map_or_else(
            || current.clone(),
            |next| Members {
                validators: next.validators.clone(),
                gateways: next.gateways.clone(),
            },
        );
        let mut results = Vec::with_capacity(requests.len());
        let mut accepted = 0;
        for request in requests {
            let decision = match Reconfiguration::decode_op(&request.op) {
                Some(Ok(reconfiguration)) => {
                    let checked = &mut self.metrics.signatures_verified;
                    let epoch = (&set, &members);
                    match reconfiguration.decide_counting(&self.config, request, epoch, checked) {
                        Ok(_) => {
                            // Into the change scheduled so far: the same rules hold for the
                            // sum of the epoch's decisions.
                            let mut with = next.clone();
                            for change in &reconfiguration.changes {
                                apply(&mut with, change);
                            }
                            match fits(&self.config, &set, &with) {
                                Err(refusal) if !replay => Decision::Refused(refusal),
                                _ => {
                                    next = with;
                                    accepted += 1;
                                    Decision::Scheduled {
                                        epoch: set.epoch() + 1,
                                    }
                                }
                            }
                        }
                        Err(refusal) => Decision::Refused(refusal),
                    }
                }
                Some(Err(refusal)) => Decision::Refused(refusal),
                None => Decision::Refused(Refusal::Malformed),
            };
            results.push(decision.encode());
        }
        if replay {
            return results;
        }
        self.metrics.reconfigurations_scheduled += accepted;
        let reconfigured = next.clone();
        if slash {
            self.convict(&mut next.validators, evidence);
        }
        if next != reconfigured {
            self.metrics.validators_convicted += 1;
        }
        let changed = match &self.epochs.schedule {
            Some(scheduled) => {
                (&scheduled.validators, &scheduled.gateways) != (&next.validators, &next.gateways)
            }
            None => next != current,
        };
        if changed {
            let boundary = self.epochs.schedule.as_ref().map_or_else(
                || boundary_after(seq, self.config.window, self.config.checkpoint_interval),
                |scheduled| scheduled.boundary,
            );
            let next = NextEpoch {
                boundary,
                validators: next.validators,
                gateways: next.gateways,
            };
            self.outbox.persist(Record::Scheduled {
                seq,
                next: next.clone(),
            });
            self.evidence
                .retain_pending(|offender| next.validators.contains(offender));
            self.epochs.schedule = Some(next);
            self.epochs.scheduled_at = seq;
        }
        results
    }

    /// Removes from `next` the validators `evidence` convicts: each by the key its epoch's
    /// set names (evidence may be of an epoch already over).
    fn convict(&self, next: &mut Vec<PublicKey>, evidence: &[Evidence]) {
        for evidence in evidence {
            let Some(key) = self
                .set_of_epoch(evidence.epoch)
                .ok()
                .and_then(|set| set.key(evidence.offender()).map(VerifyingKey::public_key))
            else {
                continue;
            };
            // Never the last validator: more convictions than f mean the fault assumption
            // failed, and an empty set could not even order its own repair.
            if next.len() > 1 {
                next.retain(|k| *k != key);
            }
        }
    }

    /// The set of the epoch that ordered `seq`: this one, or the ended one whose seqs hold
    /// it (this one's for a seq no known epoch holds).
    fn set_at(&self, seq: u64) -> ValidatorSet {
        if seq > self.validators.base().0 {
            return self.validators.clone();
        }
        self.epochs
            .sets
            .iter()
            .find(|set| {
                let end = self.epoch_boundary(set.epoch()).unwrap_or(u64::MAX);
                set.base().0 < seq && seq <= end
            })
            .cloned()
            .unwrap_or_else(|| self.validators.clone())
    }
}
