//! What the operator's commands do against a running network: change the validator set by
//! governance (`pbft validator add|remove|rotate-key`), and wait until a new validator's key is in the set so it can join
//! (`pbft node` with a key outside the genesis set).

use std::fmt::Write as _;
use std::time::Duration;

use pbft_core::{
    Approval, ChainId, Decision, Digest, EpochChange, Keypair, PublicKey, Reconfiguration,
    SetChange, Signature, approve,
};
use pbft_host::config::{Network, decode_hex};

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
    /// A proposal file of another network than the config's.
    #[error("the proposal is for another network than the config's (its chain differs)")]
    OtherNetwork,
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

/// A reconfiguration prepared for its governors to approve, each where their key is (`pbft
/// validator approve`), then submitted (`pbft validator submit`): the epoch it names, the
/// throwaway client key and request number its approvals sign ([`pbft_core::approval_digest`]),
/// and the approvals so far. Kept as a small TOML file; the client key in it only
/// authenticates this one request (its approvals allow nothing else), but whoever holds the
/// file can submit it.
#[derive(Debug)]
pub struct Proposal {
    /// The network it is for.
    pub chain: ChainId,
    /// The epoch whose governors approve; it must commit in it.
    pub epoch: u64,
    /// The client key that submits it.
    pub client: Keypair,
    /// The request number it is submitted under.
    pub client_seq: u64,
    /// The changes, in order.
    pub changes: Vec<SetChange>,
    /// The approvals so far, one per governor.
    pub approvals: Vec<Approval>,
    /// Where it committed, once submitted (scheduled or refused): its request number is
    /// spent, and sending it again would be refused as a number taken.
    pub committed_at_seq: Option<u64>,
}

/// A proposal file as written: keys and signatures as hex, changes as `pbft validator`'s
/// own words (`add <key>`, `rotate-key <old> <new>`, ...).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalFile {
    chain: String,
    epoch: u64,
    client_seed: String,
    client_seq: u64,
    changes: Vec<String>,
    #[serde(default)]
    committed_at_seq: Option<u64>,
    #[serde(default)]
    approvals: Vec<ApprovalLine>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalLine {
    signer: String,
    signature: String,
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    match decode_hex(text, &mut bytes) {
        true => Ok(bytes),
        false => Err(format!("{what}: not {} hex digits", 2 * N)),
    }
}

/// A change in `pbft validator`'s words.
pub fn describe(change: &SetChange) -> String {
    match change {
        SetChange::Add(key) => format!("add {key}"),
        SetChange::Remove(key) => format!("remove {key}"),
        SetChange::Rotate { old, new } => format!("rotate-key {old} {new}"),
        SetChange::AddGateway(key) => format!("add-gateway {key}"),
        SetChange::RemoveGateway(key) => format!("remove-gateway {key}"),
    }
}

/// The change `text` describes ([`describe`]'s words).
fn parse_change(text: &str) -> Result<SetChange, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key = |word: &str| {
        pbft_host::config::parse_public_key(word)
            .filter(|key| key.check().is_ok())
            .ok_or_else(|| format!("`{word}` is not a public key (64 hex digits)"))
    };
    match words.as_slice() {
        ["add", k] => Ok(SetChange::Add(key(k)?)),
        ["remove", k] => Ok(SetChange::Remove(key(k)?)),
        ["rotate-key", old, new] => Ok(SetChange::Rotate {
            old: key(old)?,
            new: key(new)?,
        }),
        ["add-gateway", k] => Ok(SetChange::AddGateway(key(k)?)),
        ["remove-gateway", k] => Ok(SetChange::RemoveGateway(key(k)?)),
        _ => Err(format!(
            "`{text}` is not a change (add, remove, rotate-key, add-gateway, remove-gateway)"
        )),
    }
}

impl Proposal {
    /// Prepares `changes` for approval: follows `network`'s epochs (so the approvals name
    /// the epoch it will commit in) and picks a fresh client key and number.
    ///
    /// # Errors
    ///
    /// The client cannot connect, or the system has no random source.
    pub async fn prepare(
        network: &Network,
        transport: Transport,
        changes: Vec<SetChange>,
        timeout: Duration,
    ) -> Result<Proposal, ChangeError> {
        let seed = pbft_host::config::random_seed()
            .map_err(|err| ChangeError::Transport(TransportError::Io(err)))?;
        let mut client = ClusterClient::connect(transport, network, Keypair::from_seed(&seed))?;
        client.follow_epochs(ASK_FOR.min(timeout)).await;
        Ok(Proposal {
            chain: network.core.chain_id,
            epoch: client.validators().epoch(),
            client: Keypair::from_seed(&seed),
            client_seq: client.next_client_seq(),
            changes,
            approvals: Vec::new(),
            committed_at_seq: None,
        })
    }

    /// Adds `governor`'s approval (replacing one it gave before).
    pub fn approve(&mut self, governor: &Keypair) {
        let approval = approve(
            governor,
            &self.chain,
            &self.client.public_key(),
            self.client_seq,
            self.epoch,
            &self.changes,
        );
        self.approvals.retain(|a| a.signer != approval.signer);
        self.approvals.push(approval);
    }

    /// The proposal file's text (written here: every value is a number or a string of hex
    /// digits and words, nothing to escape).
    pub fn to_toml(&self) -> String {
        let mut text = String::from(
            "# A reconfiguration for governors to approve, each with their own key file:\n#   pbft validator approve FILE --approver KEY_FILE\n# then to submit:\n#   pbft validator submit FILE --config network.toml\n",
        );
        let changes: Vec<String> = self
            .changes
            .iter()
            .map(|change| format!("\"{}\"", describe(change)))
            .collect();
        let _ = write!(
            text,
            "chain = \"{}\"\nepoch = {}\nclient_seed = \"{}\"\nclient_seq = {}\nchanges = [{}]\n",
            self.chain.0,
            self.epoch,
            to_hex(&self.client.seed()),
            self.client_seq,
            changes.join(", ")
        );
        if let Some(seq) = self.committed_at_seq {
            let _ = writeln!(text, "committed_at_seq = {seq}");
        }
        for approval in &self.approvals {
            let _ = write!(
                text,
                "\n[[approvals]]\nsigner = \"{}\"\nsignature = \"{}\"\n",
                approval.signer,
                to_hex(&approval.signature.0)
            );
        }
        text
    }

    /// A proposal file's proposal.
    ///
    /// # Errors
    ///
    /// What in the text is not a proposal.
    pub fn from_toml(text: &str) -> Result<Proposal, String> {
        let file: ProposalFile =
            toml::from_str(text).map_err(|err| format!("not a proposal file: {err}"))?;
        let changes = file
            .changes
            .iter()
            .map(|change| parse_change(change))
            .collect::<Result<Vec<_>, _>>()?;
        let approvals = file
            .approvals
            .iter()
            .map(|line| {
                Ok(Approval {
                    signer: PublicKey(from_hex(&line.signer, "an approval's signer")?),
                    signature: Signature(from_hex(&line.signature, "an approval's signature")?),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Proposal {
            chain: ChainId(Digest(from_hex(&file.chain, "chain")?)),
            epoch: file.epoch,
            client: Keypair::from_seed(&from_hex(&file.client_seed, "client_seed")?),
            client_seq: file.client_seq,
            changes,
            approvals,
            committed_at_seq: file.committed_at_seq,
        })
    }

    /// Submits it to `network` and waits up to `timeout` for the decision.
    ///
    /// # Errors
    ///
    /// [`ChangeError`]: another network's proposal, no connection, no decision in time, or
    /// the network's refusal (approved for an epoch that is over: approve it again).
    pub async fn submit(
        &self,
        network: &Network,
        transport: Transport,
        timeout: Duration,
    ) -> Result<Scheduled, ChangeError> {
        if self.chain != network.core.chain_id {
            return Err(ChangeError::OtherNetwork);
        }
        let (epoch, changes, approvals) =
            (self.epoch, self.changes.clone(), self.approvals.clone());
        let keypair = Keypair::from_seed(&self.client.seed());
        let mut client =
            ClusterClient::connect_numbered(transport, network, keypair, self.client_seq)?;
        client.follow_epochs(ASK_FOR.min(timeout)).await;
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
}

/// Submits `changes` to `network`, approved by `approvers` (governors' keys: validators of
/// the current epoch, or the network's `governors`), from a fresh client key, and waits up
/// to `timeout` for the decision: [`Proposal::prepare`], each approval, and
/// [`Proposal::submit`] at once, for an operator who holds the key files in one place.
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
    let mut proposal = Proposal::prepare(network, transport, changes, timeout).await?;
    for governor in approvers {
        proposal.approve(governor);
    }
    proposal.submit(network, transport, timeout).await
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
