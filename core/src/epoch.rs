//! Epochs: the validator set as replicated state, the boundary where a committed change of it
//! takes effect, and the proof of each change that lets anyone follow the set from genesis.
//!
//! A change is decided by consensus, never by one replica: a committed reconfiguration the
//! governance rule approves ([`crate::Reconfiguration`]: add, remove, rotate a key), or the
//! removal of a validator convicted by committed equivocation evidence
//! ([`crate::Config::slash_equivocators`]). The batch at seq `s` that commits the first such
//! decision of an epoch schedules the change ([`NextEpoch`]) at the boundary
//! [`boundary_after`]`(s)`: the first checkpoint seq at or above `s + window`. Later decisions
//! of the same epoch join the same change.
//!
//! Why a window later: a replica votes only inside its watermark window (low, low + window],
//! and its low watermark is at most its executed seq. A replica that has not executed `s` yet
//! has low < `s`, so it never votes beyond `s + window` ≤ boundary; one that executed `s`
//! knows the boundary and votes on nothing beyond it in the old epoch. So no quorum of the old
//! epoch ever signs a slot after the boundary: every QC of an epoch is for a batch that
//! executes. The primary fills the slots up to the boundary with empty batches when it has
//! nothing else to propose.
//!
//! The change takes effect when the checkpoint at the boundary is stable and this replica's
//! state there matches it. The new epoch starts at view 0 from that checkpoint, which it takes
//! as its genesis. The old epoch's certificate of that checkpoint and the old epoch's state
//! there (which names the next set) are the [`EpochChange`]: a client that knows epoch `e`'s set
//! checks it with [`verify_epoch_change`] and learns epoch `e + 1`'s
//! ([`verify_qc_across_epochs`] walks a chain of them from genesis).

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::certificate::{CertificateError, QuorumCertificate, verify_qc};
use crate::config::{ChainId, ValidatorSet};
use crate::crypto::{Digest, Hasher, PublicKey};
use crate::view_change::{StableCheckpoint, verify_checkpoint};

/// A change of the validator set that a committed decision scheduled: at the checkpoint
/// `boundary`, epoch `e` ends and epoch `e + 1` begins with `validators`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextEpoch {
    /// The last seq of the current epoch: a checkpoint seq ([`boundary_after`]).
    pub boundary: u64,
    /// The next epoch's validators, in id order: the current order with removed keys taken
    /// out, added ones appended, and a rotated key's replacement in its place.
    pub validators: Vec<PublicKey>,
    /// The gateways whose attestations the next epoch takes ([`crate::SetChange::AddGateway`];
    /// empty in an end-to-end network).
    pub gateways: Vec<PublicKey>,
}

/// The validator set as part of the replicated state at a checkpoint: the epoch the
/// checkpoint was signed in, its set, and the change scheduled, if any. A checkpoint's digest
/// covers it ([`crate::Manifest::digest`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochState {
    /// The epoch.
    pub epoch: u64,
    /// Its validators, in id order.
    pub validators: Vec<PublicKey>,
    /// The change a committed decision scheduled.
    pub next: Option<NextEpoch>,
}

impl EpochState {
    /// The state's part in a checkpoint digest.
    pub(crate) fn hash_into(&self, hasher: &mut Hasher) {
        hasher.u64(self.epoch).u64(self.validators.len() as u64);
        for key in &self.validators {
            hasher.bytes(&key.0);
        }
        match &self.next {
            None => {
                hasher.u64(0);
            }
            Some(next) => {
                hasher
                    .u64(1)
                    .u64(next.boundary)
                    .u64(next.validators.len() as u64);
                for key in &next.validators {
                    hasher.bytes(&key.0);
                }
                hasher.u64(next.gateways.len() as u64);
                for key in &next.gateways {
                    hasher.bytes(&key.0);
                }
            }
        }
    }
}

/// The boundary of a change decided by the batch at `seq`: the first multiple of
/// `checkpoint_interval` at or above `seq + window` (see the module docs for why).
pub fn boundary_after(seq: u64, window: u64, checkpoint_interval: u64) -> u64 {
    let interval = checkpoint_interval.max(1);
    seq.saturating_add(window)
        .div_ceil(interval)
        .saturating_mul(interval)
}

/// Proof that epoch `state.epoch` ended at checkpoint `checkpoint.seq` and which validators
/// govern the next one: the old epoch's stable-checkpoint certificate there, and the state
/// it certifies (the application's part by its digest, `body`, so the proof stays small).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochChange {
    /// A quorum of epoch `state.epoch` certifying the state at the boundary.
    pub checkpoint: StableCheckpoint,
    /// The digest of the rest of the state there ([`crate::Manifest::body_digest`]).
    pub body: Digest,
    /// The validator set's part of the state there; `state.next` is the change, at
    /// `checkpoint.seq`.
    pub state: EpochState,
}

impl EpochChange {
    /// The epoch this change starts.
    pub fn epoch(&self) -> u64 {
        self.state.epoch.saturating_add(1)
    }

    /// The last seq of the old epoch; the new one orders from the next.
    pub fn boundary(&self) -> u64 {
        self.checkpoint.seq
    }

    /// The new epoch's validator keys, in id order.
    pub fn validators(&self) -> &[PublicKey] {
        self.state.next.as_ref().map_or(&[], |n| &n.validators)
    }

    /// The gateways whose attestations the new epoch takes.
    pub fn gateways(&self) -> &[PublicKey] {
        self.state.next.as_ref().map_or(&[], |n| &n.gateways)
    }

    /// The new epoch's checked set.
    pub fn validator_set(&self) -> Result<ValidatorSet, CertificateError> {
        ValidatorSet::new(self.epoch(), self.validators())
            .map(|set| set.starting_at(self.checkpoint.seq, self.checkpoint.digest))
            .map_err(|_| CertificateError::BadEpochChange("the next validator set is invalid"))
    }
}

/// The digest a checkpoint at `seq` signs, from its parts: the state's body digest and its
/// validator set's part ([`crate::Manifest::digest`]).
pub(crate) fn checkpoint_digest(
    chain: &ChainId,
    seq: u64,
    body: &Digest,
    state: &EpochState,
) -> Digest {
    let mut hasher = Hasher::new(b"pbft/v2/checkpoint-state");
    hasher.digest(&chain.0).u64(seq).digest(body);
    state.hash_into(&mut hasher);
    hasher.finish()
}

/// Checks `change` with the set of the epoch it ends and returns the next epoch's set.
///
/// # Errors
///
/// [`CertificateError::WrongEpoch`] when `change` ends another epoch than `validators`';
/// [`CertificateError::BadEpochChange`] when the state it names is not the one its
/// certificate signed, schedules no change at the certificate's seq, or names an invalid set;
/// the checkpoint certificate's own errors.
pub fn verify_epoch_change(
    chain: &ChainId,
    validators: &ValidatorSet,
    change: &EpochChange,
) -> Result<ValidatorSet, CertificateError> {
    if change.state.epoch != validators.epoch() {
        return Err(CertificateError::WrongEpoch {
            got: change.state.epoch,
            expected: validators.epoch(),
        });
    }
    let own: Vec<PublicKey> = validators.public_keys().collect();
    if change.state.validators != own {
        return Err(CertificateError::BadEpochChange(
            "the state names another set for its epoch",
        ));
    }
    if change.state.next.as_ref().map(|n| n.boundary) != Some(change.checkpoint.seq) {
        return Err(CertificateError::BadEpochChange(
            "the state schedules no change at this checkpoint",
        ));
    }
    let digest = checkpoint_digest(chain, change.checkpoint.seq, &change.body, &change.state);
    if digest != change.checkpoint.digest {
        return Err(CertificateError::BadEpochChange(
            "the certificate signs another state",
        ));
    }
    verify_checkpoint(chain, validators, &change.checkpoint)?;
    change.validator_set()
}

/// Checks a QC of any epoch with nothing but the genesis set and the chain of epoch changes
/// since (oldest first, each ending the epoch the one before began): the set of the QC's
/// epoch comes out of the chain, and a QC of an epoch the chain shows ended must be at or
/// below that epoch's boundary. Returns the QC's epoch's set.
///
/// A client trusts the chain only as far as it goes: a QC of the last epoch it shows is
/// accepted, even if a later change (which the client was not shown) ended that epoch. Fetch
/// the newest chain before relying on a QC of an old epoch.
///
/// # Errors
///
/// [`verify_epoch_change`]'s errors for a link, [`CertificateError::WrongEpoch`] for a QC of
/// an epoch the chain does not reach, [`CertificateError::BadEpochChange`] for a QC above its
/// epoch's boundary, and [`verify_qc`]'s.
pub fn verify_qc_across_epochs(
    chain: &ChainId,
    genesis: &ValidatorSet,
    changes: &[EpochChange],
    qc: &QuorumCertificate,
) -> Result<ValidatorSet, CertificateError> {
    let mut set = genesis.clone();
    for change in changes {
        let next = verify_epoch_change(chain, &set, change)?;
        if set.epoch() == qc.epoch {
            if qc.seq > change.boundary() {
                return Err(CertificateError::BadEpochChange(
                    "the QC is above its epoch's boundary",
                ));
            }
            break;
        }
        set = next;
    }
    if qc.seq <= set.base().0 {
        return Err(CertificateError::BadEpochChange(
            "the QC is at or below its epoch's start",
        ));
    }
    verify_qc(chain, &set, qc)?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boundary_is_the_first_checkpoint_a_window_later() {
        assert_eq!(boundary_after(1, 256, 128), 384);
        assert_eq!(boundary_after(128, 256, 128), 384);
        assert_eq!(boundary_after(129, 256, 128), 512);
        assert_eq!(boundary_after(5, 8, 4), 16);
        assert_eq!(boundary_after(u64::MAX, 8, 4), u64::MAX);
    }
}
