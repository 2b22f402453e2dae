//! What the operator's commands do against a running network: change the validator set by
//! governance (`pbft validator add|remove|rotate-key`), show where each validator is
//! (`pbft status`), and wait until a new validator's key is in the set so it can join
//! (`pbft node` with a key outside the genesis set).

use std::fmt::Write as _;
use std::time::Duration;

use pbft_core::{Decision, EpochChange, Keypair, PublicKey, Reconfiguration, SetChange, approve};
use pbft_host::config::Network;

use crate::client::{ClientFailure, ClusterClient, Transport};
use crate::transport::TransportError;

/// How long a validator asks for the epoch changes before it says it still waits.
const ASK_FOR: Duration = Duration::from_secs(3);

/// Why a governance change did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The client could not connect.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// No f + 1 matching replies.
    #[error("{0}")]
    Client(#[from] ClientFailure),
    /// The reply's result is not a decision (the network runs a build without governance).
    #[error("the validators answered with something other than a decision")]
    NoDecision,
    /// The network decided against it, and said why.
    #[error("refused at seq {seq}: {refusal}")]
    Refused {
        /// Where the request committed.
        seq: u64,
        /// Why nothing changes.
        refusal: pbft_core::Refusal,
    },
}

/// A committed, scheduled change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// The epoch that starts with it, at the next checkpoint boundary.
    pub epoch: u64,
    /// Where the request committed.
    pub seq: u64,
    /// The epoch it was approved and committed in.
    pub approved_in: u64,
}

/// Submits `changes` to `network`, approved by `approvers` (governors' keys: validators of
/// the current epoch, or the network's `governors`), from a fresh client key, and waits up
/// to `timeout` for the decision.
///
/// The client first follows the epoch changes, so the approvals name the epoch the request
/// commits in. Approvals sign the client key and request number, so they are made here, for
/// this one request.
///
/// # Errors
///
/// [`ChangeError`]: no connection, no decision in time, or the network's refusal.
pub async fn change_validators(
    network: &Network,
    transport: Transport,
    changes: Vec<SetChange>,
    approvers: &[Keypair],
    timeout: Duration,
) -> Result<Scheduled, ChangeError> {
    let keypair = Keypair::from_seed(
        &pbft_host::config::random_seed()
            .map_err(|err| ChangeError::Transport(TransportError::Io(err)))?,
    );
    let mut client = ClusterClient::connect(transport, network, keypair)?;
    client.follow_epochs(ASK_FOR.min(timeout)).await;
    let epoch = client.validators().epoch();
    let (me, seq) = (client.public_key(), client.next_client_seq());
    let chain = network.core.chain_id;
    let approvals = approvers
        .iter()
        .map(|governor| approve(governor, &chain, &me, seq, epoch, &changes))
        .collect();
    let reconfiguration = Reconfiguration {
        epoch,
        changes,
        approvals,
    };
    let (outcome, _) = client.execute(reconfiguration.encode_op(), timeout).await?;
    match Decision::decode(&outcome.result) {
        Some(Decision::Scheduled { epoch: starts }) => Ok(Scheduled {
            epoch: starts,
            seq: outcome.seq,
            approved_in: epoch,
        }),
        Some(Decision::Refused(refusal)) => Err(ChangeError::Refused {
            seq: outcome.seq,
            refusal,
        }),
        None => Err(ChangeError::NoDecision),
    }
}

/// Waits until a validator set of `network` holds `key`, and returns the chain of epoch
/// changes from genesis to it: what a validator outside the genesis set joins with. Says on
/// standard error, once per epoch, that it waits (and for what), asking every few seconds.
///
/// # Errors
///
/// The client cannot connect.
pub async fn wait_to_join(
    network: &Network,
    transport: Transport,
    key: PublicKey,
) -> Result<Vec<EpochChange>, TransportError> {
    let keypair =
        Keypair::from_seed(&pbft_host::config::random_seed().map_err(TransportError::Io)?);
    let mut client = ClusterClient::connect(transport, network, keypair)?;
    let mut chain = Vec::new();
    let mut told = None;
    loop {
        let (followed, answered) = client.follow_epochs(ASK_FOR).await;
        chain.extend(followed);
        let set = client.validators();
        if answered == 0 {
            // Not "not in the set": nobody said anything (the addresses, the network's
            // name, or the transport may be wrong; or every validator is down).
            tracing::warn!(
                validators = client.targets().len(),
                "no validator answered; retrying"
            );
            told = None;
            tokio::time::sleep(ASK_FOR).await;
            continue;
        }
        if set.id_of(&key).is_some() {
            tracing::info!(
                epoch = set.epoch(),
                changes = chain.len(),
                "this key is in the validator set; joining"
            );
            return Ok(chain);
        }
        if told != Some(set.epoch()) {
            told = Some(set.epoch());
            tracing::warn!(
                epoch = set.epoch(),
                %key,
                "this key is not in the validator set; waiting for a committed change that adds it (`pbft validator add`) to take effect"
            );
        }
        tokio::time::sleep(ASK_FOR).await;
    }
}

/// Asks every validator `network` names where it is, and formats the answers as a table:
/// one line per validator (its key, then its id, epoch and set size, view, executed seq,
/// stable checkpoint, or that it did not answer within `timeout`), under the set of the
/// latest epoch any validator follows.
///
/// # Errors
///
/// The client cannot connect.
pub async fn status(
    network: &Network,
    transport: Transport,
    timeout: Duration,
) -> Result<String, TransportError> {
    let keypair =
        Keypair::from_seed(&pbft_host::config::random_seed().map_err(TransportError::Io)?);
    let mut client = ClusterClient::connect(transport, network, keypair)?;
    let (followed, _) = client.follow_epochs(timeout).await;
    let set = client.validators().clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "epoch {} ({} epoch changes since genesis): {} validators, quorum {}",
        set.epoch(),
        followed.len(),
        set.len(),
        set.quorum()
    );
    let _ = writeln!(
        out,
        "{:<16} {:>5} {:>6} {:>6} {:>10} {:>10} {:>10}",
        "validator", "id", "epoch", "set", "view", "executed", "stable"
    );
    let targets = client.targets().to_vec();
    for (index, key) in targets.iter().enumerate() {
        let short = &key.to_string()[..16];
        let member = match set.id_of(key) {
            Some(_) => "",
            None => "  (not in the set)",
        };
        match client.status(index, timeout).await {
            Some(status) => {
                let _ = writeln!(
                    out,
                    "{short:<16} {:>5} {:>6} {:>6} {:>10} {:>10} {:>10}{member}",
                    status.id,
                    status.epoch,
                    status.validators,
                    status.view,
                    status.executed,
                    status.stable
                );
            }
            None => {
                let _ = writeln!(out, "{short:<16} no answer in {timeout:?}{member}");
            }
        }
    }
    for key in set.public_keys().filter(|key| !targets.contains(key)) {
        let _ = writeln!(
            out,
            "{:<16} in the set, but the config gives no address: add [[peers]] with key = \"{}\" and address = \"host:port\"",
            &key.to_string()[..16],
            key
        );
    }
    Ok(out)
}
