//! Reconfiguration by governance: adding, removing and rotating validators through requests
//! like any other, authorized by the network's governance rule and decided when they commit.
//!
//! A [`Reconfiguration`] travels as the operation of an ordinary client request, marked by
//! [`RECONFIGURATION_TAG`]: it is ordered, executed exactly once and answered with a reply
//! and QC like every request. Replicas decide it themselves when its batch is delivered (the
//! application never sees it): from the committed request alone, against the set of the
//! epoch it committed in, so every correct replica decides the same. An accepted change joins
//! the change scheduled for the next epoch boundary ([`crate::boundary_after`]), like a
//! conviction ([`crate::Config::slash_equivocators`]).
//!
//! The governance rule ([`crate::Config::governors`]): by default 2f + 1 validators of the
//! current epoch approve, the quorum that commits anything; or a strict majority of an
//! operator key set. An approval signs the chain, the epoch, the changes, and the request's
//! client and number ([`approval_digest`]): the exactly-once table then refuses any replay of
//! the approved request, and a request approved in one epoch is refused in the next.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::config::{ChainId, Config, ValidatorSet};
use crate::crypto::{Digest, Hasher, Keypair, PublicKey, Signature};
use crate::statement::Request;

/// The bytes a request's operation starts with when it carries a [`Reconfiguration`]:
/// reserved, so an application op must not start with them (the key-value store's ops start
/// with the envelope's version byte).
pub const RECONFIGURATION_TAG: &[u8] = b"\0pbft/reconfigure\0";

/// Most changes one reconfiguration makes.
pub const MAX_SET_CHANGES: usize = 16;

/// One change of the validator set, or of the gateways whose attestations it takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetChange {
    /// A new validator, appended to the set (its id is the next free position).
    Add(PublicKey),
    /// A validator leaves the set; those after it move down one id.
    Remove(PublicKey),
    /// A validator's key is replaced in place: same id, new key (the old key's holder stops
    /// at the boundary, the new key's joins there, [`crate::Replica::join`]).
    Rotate {
        /// The key that leaves.
        old: PublicKey,
        /// The key that takes its place.
        new: PublicKey,
    },
    /// A gateway whose attestations validators take from the boundary on (gateway-attested
    /// networks only, [`crate::Config::attesting_gateways`] at genesis).
    AddGateway(PublicKey),
    /// A gateway whose attestations validators refuse from the boundary on
    /// ([`crate::Error::UnknownGateway`]); the last one cannot be removed.
    RemoveGateway(PublicKey),
}

/// Who an epoch admits: its validators in id order, and the gateways whose attestations it
/// takes (in the order they were added).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Members {
    /// The validators' keys.
    pub(crate) validators: Vec<PublicKey>,
    /// The attesting gateways' keys.
    pub(crate) gateways: Vec<PublicKey>,
}

/// A signature of one governor (a validator, or an operator key) on a reconfiguration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approves.
    pub signer: PublicKey,
    /// The signer's signature over [`approval_digest`].
    pub signature: Signature,
}

/// Changes of the validator set, with the approvals that authorize them: the operation of a
/// request ([`Reconfiguration::encode_op`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconfiguration {
    /// The epoch whose governors approve; the request must commit in it.
    pub epoch: u64,
    /// The changes, applied in order, at most [`MAX_SET_CHANGES`].
    pub changes: Vec<SetChange>,
    /// The approvals, each by a distinct governor.
    pub approvals: Vec<Approval>,
}

/// Why a committed reconfiguration changed nothing: the reply's result says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The operation starts with [`RECONFIGURATION_TAG`] but is not a reconfiguration.
    #[error("the operation is not a valid reconfiguration")]
    Malformed,
    /// No changes, or more than [`MAX_SET_CHANGES`].
    #[error("a reconfiguration makes between 1 and {MAX_SET_CHANGES} changes")]
    ChangeCount,
    /// Approved for another epoch than the one it committed in: approve it again in this one.
    #[error("approved for epoch {approved}, committed in epoch {current}: approve it again")]
    WrongEpoch {
        /// The epoch the approvals name.
        approved: u64,
        /// The epoch it committed in.
        current: u64,
    },
    /// A change that does not fit the epoch's set: adding a member, removing or rotating a
    /// non-member, an invalid key, a key changed twice, or removing every validator.
    #[error("change {index} does not fit the epoch's validator set: {why}")]
    Invalid {
        /// Its position in `changes`.
        index: u32,
        /// Why.
        why: Misfit,
    },
    /// The set it leads to is not one the config runs: too many validators for the message
    /// size ([`Config::max_validators`]), or a key the config lists as a gateway.
    #[error("the validator set it leads to is not one the config can run")]
    Unrunnable,
    /// Too few of the epoch's validators stay: f + 1 of them must (f of the new set), so an
    /// honest one that holds the state hands it to the new ones. Change fewer at a time.
    #[error("{remain} of the current validators would stay, {needed} must")]
    TooFewRemain {
        /// The epoch's validators in the set it leads to.
        remain: u32,
        /// f + 1 of that set.
        needed: u32,
    },
    /// Too few valid approvals of distinct governors.
    #[error("{valid} valid approvals of {needed} needed")]
    NotAuthorized {
        /// Valid approvals by distinct governors.
        valid: u32,
        /// The rule's threshold.
        needed: u32,
    },
}

/// Why a change does not fit the epoch's validator set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Misfit {
    /// The key to add is not a valid Ed25519 key.
    #[error("the new key is not a valid Ed25519 key")]
    InvalidKey,
    /// The key to add is a validator already.
    #[error("the new key is a validator already")]
    AlreadyValidator,
    /// The key to remove or rotate is not a validator.
    #[error("the key is not a validator")]
    NotValidator,
    /// An earlier change of the same reconfiguration names the key.
    #[error("a key changed twice in one reconfiguration")]
    ChangedTwice,
    /// Removing it would leave no validator.
    #[error("the set would be empty")]
    EmptySet,
    /// The gateway to add attests already.
    #[error("the gateway attests already")]
    AlreadyGateway,
    /// The gateway to remove is not one that attests.
    #[error("the key is not an attesting gateway")]
    NotGateway,
    /// Removing it would leave no attesting gateway.
    #[error("no attesting gateway would be left")]
    NoGateway,
    /// The network is end to end: clients sign their own requests and no gateway attests
    /// (its config lists no `attesting_gateways`, and that is part of its chain id).
    #[error("the network is end to end: no gateway attests")]
    EndToEnd,
}

/// What a committed reconfiguration decided: the result in its reply
/// ([`Decision::decode`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Scheduled: the changes take effect when epoch `epoch` starts, at the next boundary,
    /// joined with the epoch's other decisions ([`Reconfiguration::decide`]'s rules hold for
    /// their sum: one that would break them is refused; a conviction of a key a change
    /// names may still make that change a no-op).
    Scheduled {
        /// The epoch that starts with them.
        epoch: u64,
    },
    /// Refused; nothing changes.
    Refused(Refusal),
}

impl Decision {
    /// The reply result's bytes.
    pub fn encode(&self) -> Vec<u8> {
        crate::envelope::encode(self)
    }

    /// A reply result's decision, if it is one.
    pub fn decode(bytes: &[u8]) -> Option<Decision> {
        crate::envelope::decode(bytes, 1024).ok()
    }
}

/// What a governor signs to approve `changes` in `epoch`, carried by the request numbered
/// `client_seq` of `client`.
pub fn approval_digest(
    chain: &ChainId,
    client: &PublicKey,
    client_seq: u64,
    epoch: u64,
    changes: &[SetChange],
) -> Digest {
    let mut hasher = Hasher::new(b"pbft/v1/reconfiguration");
    hasher
        .digest(&chain.0)
        .bytes(&client.0)
        .u64(client_seq)
        .u64(epoch)
        .u64(changes.len() as u64);
    for change in changes {
        match change {
            SetChange::Add(key) => hasher.u64(0).bytes(&key.0),
            SetChange::Remove(key) => hasher.u64(1).bytes(&key.0),
            SetChange::Rotate { old, new } => hasher.u64(2).bytes(&old.0).bytes(&new.0),
            SetChange::AddGateway(key) => hasher.u64(3).bytes(&key.0),
            SetChange::RemoveGateway(key) => hasher.u64(4).bytes(&key.0),
        };
    }
    hasher.finish()
}

/// One governor's approval of `changes` in `epoch` for the request `client_seq` of `client`.
pub fn approve(
    keypair: &Keypair,
    chain: &ChainId,
    client: &PublicKey,
    client_seq: u64,
    epoch: u64,
    changes: &[SetChange],
) -> Approval {
    let digest = approval_digest(chain, client, client_seq, epoch, changes);
    Approval {
        signer: keypair.public_key(),
        signature: keypair.sign(&digest),
    }
}

impl Reconfiguration {
    /// The operation of a request carrying it: [`RECONFIGURATION_TAG`], then its envelope.
    pub fn encode_op(&self) -> Vec<u8> {
        let mut op = RECONFIGURATION_TAG.to_vec();
        op.extend_from_slice(&crate::envelope::encode(self));
        op
    }

    /// The reconfiguration an operation carries: `None` for an application's op, a
    /// [`Refusal::Malformed`] for a tagged one that does not decode.
    pub fn decode_op(op: &[u8]) -> Option<Result<Reconfiguration, Refusal>> {
        let body = op.strip_prefix(RECONFIGURATION_TAG)?;
        Some(crate::envelope::decode(body, usize::MAX).map_err(|_| Refusal::Malformed))
    }

    /// Decides the reconfiguration `request` carries, committed in the epoch of `set` whose
    /// attesting gateways are `gateways`, under `config` (its chain and governors: empty is
    /// the default rule, a quorum of `set` approves; otherwise a strict majority of them).
    /// Approvals are checked first, in order up to the threshold; the first that does not
    /// verify ends the check. Then the changes must fit `set` and `gateways` in order, and the
    /// set they lead to must be one `config` runs
    /// ([`Config::validate_for`]) and keep f + 1 of `set`'s validators (f of the new set, the
    /// bound the network relies on past the boundary), so at least one honest validator that
    /// holds the state stays to hand it to the new ones.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] that says why it changes nothing.
    pub fn decide(
        &self,
        config: &Config,
        request: &Request,
        set: &ValidatorSet,
        gateways: &[PublicKey],
    ) -> Result<(), Refusal> {
        let members = Members {
            validators: set.public_keys().collect(),
            gateways: gateways.to_vec(),
        };
        self.decide_counting(config, request, (set, &members), &mut 0)
            .map(|_| ())
    }

    /// [`Reconfiguration::decide`], adding the signatures it checks to `checked`.
    /// `members` are the epoch's (`set`'s keys and its gateways); returns those the changes
    /// lead to.
    pub(crate) fn decide_counting(
        &self,
        config: &Config,
        request: &Request,
        (set, members): (&ValidatorSet, &Members),
        checked: &mut u64,
    ) -> Result<Members, Refusal> {
        if self.epoch != set.epoch() {
            return Err(Refusal::WrongEpoch {
                approved: self.epoch,
                current: set.epoch(),
            });
        }
        if self.changes.is_empty() || self.changes.len() > MAX_SET_CHANGES {
            return Err(Refusal::ChangeCount);
        }
        let governors = &config.governors;
        let needed = match governors.is_empty() {
            true => set.quorum(),
            false => governors.len() / 2 + 1,
        };
        let digest = approval_digest(
            &config.chain_id,
            &request.client,
            request.client_seq,
            self.epoch,
            &self.changes,
        );
        let mut counted: Vec<PublicKey> = Vec::new();
        for approval in &self.approvals {
            if counted.len() >= needed {
                break;
            }
            // A validator's key is decompressed already; an operator key is decompressed
            // here, once per approval (at most one per governor counts).
            let key = match governors.is_empty() {
                true => set
                    .id_of(&approval.signer)
                    .and_then(|id| set.key(id))
                    .cloned(),
                false => governors
                    .contains(&approval.signer)
                    .then(|| approval.signer.verifying_key().ok())
                    .flatten(),
            };
            let Some(key) = key else {
                continue;
            };
            if counted.contains(&approval.signer) {
                continue;
            }
            *checked += 1;
            if key.verify(&digest, &approval.signature).is_err() {
                // No honest operator sends one: the check stops here, so junk costs one.
                break;
            }
            counted.push(approval.signer);
        }
        if counted.len() < needed {
            return Err(Refusal::NotAuthorized {
                valid: counted.len() as u32,
                needed: needed as u32,
            });
        }
        // Only an authorized change pays for building the set it leads to.
        let after = self.check_changes(config, members)?;
        fits(config, set, &after)?;
        Ok(after)
    }

    /// Each change must fit the members as the ones before it leave them (checked against
    /// the epoch's, not the ones scheduled, so the decision depends on the committed request
    /// and the epoch alone). Returns the members they lead to.
    fn check_changes(&self, config: &Config, members: &Members) -> Result<Members, Refusal> {
        let mut after = members.clone();
        let mut touched: Vec<PublicKey> = Vec::new();
        for (index, change) in self.changes.iter().enumerate() {
            let invalid = |why| Refusal::Invalid {
                index: index as u32,
                why,
            };
            let named: &[PublicKey] = match change {
                SetChange::Add(key)
                | SetChange::Remove(key)
                | SetChange::AddGateway(key)
                | SetChange::RemoveGateway(key) => core::slice::from_ref(key),
                SetChange::Rotate { old, new } => &[*old, *new],
            };
            if named.iter().any(|key| touched.contains(key)) {
                return Err(invalid(Misfit::ChangedTwice));
            }
            touched.extend_from_slice(named);
            let (validators, gateways) = (&after.validators, &after.gateways);
            let gateway_change = matches!(
                change,
                SetChange::AddGateway(_) | SetChange::RemoveGateway(_)
            );
            match change {
                // Whether requests are attested is part of the chain id: governance changes
                // who attests, never whether anyone does.
                _ if gateway_change && config.attesting_gateways.is_empty() => {
                    return Err(invalid(Misfit::EndToEnd));
                }
                SetChange::Add(key)
                | SetChange::Rotate { new: key, .. }
                | SetChange::AddGateway(key)
                    if key.verifying_key().is_err() =>
                {
                    return Err(invalid(Misfit::InvalidKey));
                }
                SetChange::Add(key) | SetChange::Rotate { new: key, .. }
                    if validators.contains(key) =>
                {
                    return Err(invalid(Misfit::AlreadyValidator));
                }
                SetChange::Remove(key) | SetChange::Rotate { old: key, .. }
                    if !validators.contains(key) =>
                {
                    return Err(invalid(Misfit::NotValidator));
                }
                SetChange::Remove(_) if validators.len() == 1 => {
                    return Err(invalid(Misfit::EmptySet));
                }
                SetChange::AddGateway(key) if gateways.contains(key) => {
                    return Err(invalid(Misfit::AlreadyGateway));
                }
                SetChange::RemoveGateway(key) if !gateways.contains(key) => {
                    return Err(invalid(Misfit::NotGateway));
                }
                SetChange::RemoveGateway(_) if gateways.len() == 1 => {
                    return Err(invalid(Misfit::NoGateway));
                }
                _ => {}
            }
            apply(&mut after, change);
        }
        Ok(after)
    }
}

/// Whether `after`, the members a change of `set` leads to, is a set `config` runs (no key
/// both a validator and a gateway; a gateway-attested network keeps one gateway at least)
/// that keeps f + 1 of `set`'s validators (f of `after`'s).
///
/// # Errors
///
/// [`Refusal::Unrunnable`] or [`Refusal::TooFewRemain`].
pub(crate) fn fits(config: &Config, set: &ValidatorSet, after: &Members) -> Result<(), Refusal> {
    let validators = &after.validators;
    let runs = ValidatorSet::new(set.epoch() + 1, validators)
        .is_ok_and(|next| config.validate_for(&next).is_ok());
    let attested = !config.attesting_gateways.is_empty();
    if !runs
        || after.gateways.iter().any(|key| validators.contains(key))
        || (attested && after.gateways.is_empty())
    {
        return Err(Refusal::Unrunnable);
    }
    let remain = validators
        .iter()
        .filter(|key| set.id_of(key).is_some())
        .count();
    // The new set's bound: past the boundary it is the one the network relies on (a
    // faulty validator that stays counts against it).
    let needed = ValidatorSet::max_faulty_of(validators.len()) + 1;
    if remain < needed {
        return Err(Refusal::TooFewRemain {
            remain: remain as u32,
            needed: needed as u32,
        });
    }
    Ok(())
}

/// Applies `change` to members as far as it fits them (a validator change that no longer
/// fits, because a conviction or an earlier change of the same epoch got there first,
/// changes nothing; the set is never emptied).
pub(crate) fn apply(members: &mut Members, change: &SetChange) {
    let (keys, gateways) = (&mut members.validators, &mut members.gateways);
    match change {
        SetChange::Add(key) => {
            if !keys.contains(key) {
                keys.push(*key);
            }
        }
        SetChange::Remove(key) => {
            if keys.len() > 1 {
                keys.retain(|k| k != key);
            }
        }
        SetChange::Rotate { old, new } => {
            if !keys.contains(new)
                && let Some(slot) = keys.iter_mut().find(|k| *k == old)
            {
                *slot = *new;
            }
        }
        SetChange::AddGateway(key) => {
            if !gateways.contains(key) {
                gateways.push(*key);
            }
        }
        // No conviction removes a gateway: the sum of an epoch's decisions is checked
        // whole ([`fits`]), never trimmed to fit.
        SetChange::RemoveGateway(key) => gateways.retain(|k| k != key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Hasher;
    use alloc::vec;

    fn key(index: u64) -> Keypair {
        Keypair::from_seed(&Hasher::new(b"governance-test").u64(index).finish().0)
    }

    fn chain() -> ChainId {
        ChainId(Hasher::new(b"governance-test-chain").finish())
    }

    /// A request of client 100 carrying `changes` approved by `approvers` in epoch 0.
    fn request(changes: Vec<SetChange>, approvers: &[u64]) -> (Request, Reconfiguration) {
        let client = key(100);
        let approvals = approvers
            .iter()
            .map(|&i| approve(&key(i), &chain(), &client.public_key(), 7, 0, &changes))
            .collect();
        let reconfiguration = Reconfiguration {
            epoch: 0,
            changes,
            approvals,
        };
        let op = reconfiguration.encode_op();
        (Request::new(&chain(), &client, 7, op), reconfiguration)
    }

    fn set(n: u64) -> ValidatorSet {
        let keys: Vec<PublicKey> = (0..n).map(|i| key(i).public_key()).collect();
        ValidatorSet::new(0, &keys).unwrap()
    }

    #[test]
    fn an_operator_key_set_decides_by_strict_majority_and_validators_do_not_count() {
        let governors: Vec<PublicKey> = (10..13).map(|i| key(i).public_key()).collect();
        let add = vec![SetChange::Add(key(4).public_key())];
        let mut config = Config::new(chain());
        config.governors = governors;
        let decide = |approvers: &[u64]| {
            let (request, reconfiguration) = request(add.clone(), approvers);
            reconfiguration.decide(&config, &request, &set(4), &[])
        };
        assert_eq!(decide(&[10, 12]), Ok(()));
        let short = Err(Refusal::NotAuthorized {
            valid: 1,
            needed: 2,
        });
        assert_eq!(decide(&[11]), short);
        // Validators are no governors here, and one governor counts once.
        assert_eq!(decide(&[0, 1, 2, 3, 11, 11]), short);
    }

    #[test]
    fn changes_must_fit_the_set_in_order() {
        let invalid = |index, why| Err(Refusal::Invalid { index, why });
        let mut config = Config::new(chain());
        let gateway = key(50).public_key();
        config.attesting_gateways = vec![gateway];
        let decide = |changes: Vec<SetChange>| {
            let (request, reconfiguration) = request(changes, &[0, 1, 2]);
            reconfiguration.decide(&config, &request, &set(4), &[gateway])
        };
        let (k, new) = (key(1).public_key(), key(9).public_key());
        let rotate = SetChange::Rotate { old: k, new };
        assert_eq!(decide(vec![rotate.clone()]), Ok(()));
        assert_eq!(
            decide(vec![rotate, SetChange::Remove(k)]),
            invalid(1, Misfit::ChangedTwice)
        );
        assert_eq!(
            decide(vec![SetChange::Add(k)]),
            invalid(0, Misfit::AlreadyValidator)
        );
        let small_order = PublicKey([0; 32]);
        assert_eq!(
            decide(vec![SetChange::Add(small_order)]),
            invalid(0, Misfit::InvalidKey)
        );
        let everyone: Vec<SetChange> = (0..4)
            .map(|i| SetChange::Remove(key(i).public_key()))
            .collect();
        assert_eq!(decide(everyone), invalid(3, Misfit::EmptySet));
        assert_eq!(decide(Vec::new()), Err(Refusal::ChangeCount));
        // The set it leads to must be one the config runs, and keep f + 1 of this one.
        assert_eq!(
            decide(vec![SetChange::Add(gateway)]),
            Err(Refusal::Unrunnable)
        );
        let mut replace: Vec<SetChange> = (1..4)
            .map(|i| SetChange::Remove(key(i).public_key()))
            .collect();
        replace.extend((20..23).map(|i| SetChange::Add(key(i).public_key())));
        assert_eq!(
            decide(replace),
            Err(Refusal::TooFewRemain {
                remain: 1,
                needed: 2
            })
        );
        // A signature that does not verify ends the check: junk costs one.
        let (request, mut junk) = request(vec![SetChange::Add(new)], &[0, 1, 2]);
        junk.approvals[0].signature = Signature([7; 64]);
        let mut checked = 0;
        let members = Members {
            validators: set(4).public_keys().collect(),
            gateways: vec![gateway],
        };
        let refused = junk.decide_counting(&config, &request, (&set(4), &members), &mut checked);
        assert_eq!(
            refused,
            Err(Refusal::NotAuthorized {
                valid: 0,
                needed: 3
            })
        );
        assert_eq!(checked, 1);
        let mut after = members.clone();
        apply(&mut after, &SetChange::Rotate { old: k, new });
        apply(&mut after, &SetChange::Add(new));
        assert_eq!(after.validators[1], new, "a rotated key keeps its id");
        assert_eq!(after.validators.len(), 4, "adding a member changes nothing");
    }

    #[test]
    fn gateway_changes_fit_the_epochs_gateways_and_only_an_attested_network_makes_them() {
        let invalid = |index, why| Err(Refusal::Invalid { index, why });
        let (first, second) = (key(50).public_key(), key(51).public_key());
        let mut config = Config::new(chain());
        config.attesting_gateways = vec![first];
        let decide = |config: &Config, gateways: &[PublicKey], changes: Vec<SetChange>| {
            let (request, reconfiguration) = request(changes, &[0, 1, 2]);
            reconfiguration.decide(config, &request, &set(4), gateways)
        };
        let swap = vec![
            SetChange::AddGateway(second),
            SetChange::RemoveGateway(first),
        ];
        assert!(decide(&config, &[first], swap.clone()).is_ok());
        // Against the epoch's gateways, not the genesis list.
        assert_eq!(
            decide(&config, &[second], swap.clone()),
            invalid(0, Misfit::AlreadyGateway)
        );
        assert_eq!(
            decide(&config, &[first], vec![SetChange::RemoveGateway(second)]),
            invalid(0, Misfit::NotGateway)
        );
        assert_eq!(
            decide(&config, &[first], vec![SetChange::RemoveGateway(first)]),
            invalid(0, Misfit::NoGateway)
        );
        assert_eq!(
            decide(
                &config,
                &[first],
                vec![SetChange::AddGateway(PublicKey([0; 32]))]
            ),
            invalid(0, Misfit::InvalidKey)
        );
        // A validator's key attests nothing, and a gateway's validates nothing.
        let validator = key(1).public_key();
        assert_eq!(
            decide(&config, &[first], vec![SetChange::AddGateway(validator)]),
            Err(Refusal::Unrunnable)
        );
        assert_eq!(
            decide(&config, &[first, second], vec![SetChange::Add(second)]),
            Err(Refusal::Unrunnable)
        );
        assert_eq!(
            decide(&Config::new(chain()), &[], swap),
            invalid(0, Misfit::EndToEnd)
        );
        // Two removals that each fit the epoch's gateways: their sum, which the schedule
        // checks whole, leaves none.
        let mut sum = Members {
            validators: set(4).public_keys().collect(),
            gateways: vec![first, second],
        };
        apply(&mut sum, &SetChange::RemoveGateway(first));
        apply(&mut sum, &SetChange::RemoveGateway(second));
        assert_eq!(fits(&config, &set(4), &sum), Err(Refusal::Unrunnable));
    }

    #[test]
    fn a_tagged_op_that_does_not_decode_is_malformed_and_others_are_not_ours() {
        assert_eq!(Reconfiguration::decode_op(b"\x05put"), None);
        let mut op = RECONFIGURATION_TAG.to_vec();
        op.push(0xff);
        assert_eq!(
            Reconfiguration::decode_op(&op),
            Some(Err(Refusal::Malformed))
        );
        let decision = Decision::Refused(Refusal::ChangeCount);
        assert_eq!(Decision::decode(&decision.encode()), Some(decision));
    }
}
