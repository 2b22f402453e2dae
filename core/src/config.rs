//! Who takes part (the validator set of an epoch) and the limits a replica enforces.
//!
//! Every bound on memory held for the network comes from [`Config`], with its default and why.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, Hasher, PublicKey, VerifyingKey};

/// Identifies one network; part of every signed digest, so two networks' signatures never mix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ChainId(pub Digest);

impl ChainId {
    /// Derives a chain id from a human-readable network name such as `"testnet-1"`.
    pub fn from_name(name: &str) -> Self {
        ChainId(
            Hasher::new(b"pbft/v1/chain-id")
                .bytes(name.as_bytes())
                .finish(),
        )
    }

    /// The chain id of network `name` whose validators run with `config`'s agreed parameters
    /// ([`Config::agreed`]), attesting gateways and governors: [`ChainId::from_name`] when
    /// they are the defaults, otherwise a digest that also covers them. Validators that disagree on one of them then sign for
    /// different chains and never count each other's signatures: a misconfigured validator
    /// fails closed (it is one of the f faulty) instead of splitting checkpoints or
    /// exactly-once decisions.
    pub fn for_network(name: &str, config: &Config) -> Self {
        let agreed = config.agreed();
        if agreed == Config::default().agreed()
            && config.attesting_gateways.is_empty()
            && config.governors.is_empty()
        {
            return ChainId::from_name(name);
        }
        let mut hasher = Hasher::new(b"pbft/v1/chain-id+parameters");
        hasher.bytes(name.as_bytes());
        for value in agreed {
            hasher.u64(value);
        }
        // As a set: configs that list the same gateways in another order agree.
        let mut gateways: Vec<&PublicKey> = config.attesting_gateways.iter().collect();
        gateways.sort_unstable();
        for gateway in gateways {
            hasher.bytes(&gateway.0);
        }
        // Marked and counted, so no key moves between the two lists unnoticed.
        let mut governors: Vec<&PublicKey> = config.governors.iter().collect();
        governors.sort_unstable();
        if !governors.is_empty() {
            hasher.bytes(b"governors").u64(governors.len() as u64);
        }
        for governor in governors {
            hasher.bytes(&governor.0);
        }
        ChainId(hasher.finish())
    }
}

/// A validator's position in the ordered validator set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ReplicaId(pub u16);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The validators of one epoch, in order; ids are positions in this list.
#[derive(Clone, Debug)]
pub struct ValidatorSet {
    epoch: u64,
    keys: Vec<VerifyingKey>,
    ids: BTreeMap<PublicKey, ReplicaId>,
    /// The checkpoint (seq, state digest) the epoch started from: its genesis, which needs
    /// no signatures of this set (the previous epoch's certified it). (0, zero) at genesis.
    base: (u64, Digest),
}

/// Why a validator set or config cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A validator set needs at least one key.
    #[error("the validator set is empty")]
    EmptyValidatorSet,
    /// Ids are `u16`.
    #[error("{0} validators; at most 65535")]
    TooManyValidators(usize),
    /// The same key appears twice.
    #[error("validator {0} is listed twice")]
    DuplicateValidator(PublicKey),
    /// A key fails the signature acceptance rule.
    #[error("validator key {0}: {1}")]
    BadValidatorKey(PublicKey, crate::crypto::CryptoError),
    /// This validator's key is not in the set of the epoch its log says it entered: a
    /// committed decision removed it ([`crate::EpochChange`]).
    #[error("this validator was removed from the validator set at epoch {epoch}")]
    Removed {
        /// The first epoch without it.
        epoch: u64,
    },
    /// A field is out of its range; the text says which and why.
    #[error("{0}")]
    Invalid(&'static str),
    /// The largest message the validator set makes (a new view with a full window of prepared
    /// certificates, or a full batch with its certificate; [`Config::largest_message_bytes`])
    /// does not fit `max_message_bytes`: a view change could never complete.
    #[error(
        "{validators} validators: the largest message (a new view with a full window of prepared certificates, or a full batch with its certificate) takes up to {needed} bytes, over max_message_bytes ({max_message_bytes}); at most {max_validators} validators fit this window, batch and message size (raise max_message_bytes or lower window)"
    )]
    MessagesTooLarge {
        /// Validators in the set.
        validators: usize,
        /// Bytes the largest message may take.
        needed: usize,
        /// The configured limit.
        max_message_bytes: usize,
        /// The largest set the config holds ([`Config::max_validators`]).
        max_validators: usize,
    },
}

impl ValidatorSet {
    /// Builds the set for `epoch` from keys in order; checks each key once.
    pub fn new(epoch: u64, keys: &[PublicKey]) -> Result<Self, ConfigError> {
        if keys.is_empty() {
            return Err(ConfigError::EmptyValidatorSet);
        }
        if keys.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyValidators(keys.len()));
        }
        let mut ids = BTreeMap::new();
        let mut checked = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let verifying = key
                .verifying_key()
                .map_err(|err| ConfigError::BadValidatorKey(*key, err))?;
            // `index` < u16::MAX, checked above.
            if ids.insert(*key, ReplicaId(index as u16)).is_some() {
                return Err(ConfigError::DuplicateValidator(*key));
            }
            checked.push(verifying);
        }
        Ok(ValidatorSet {
            epoch,
            keys: checked,
            ids,
            base: (0, Digest::default()),
        })
    }

    /// The set starting from the checkpoint at `seq` with state `digest`, which the previous
    /// epoch certified ([`crate::EpochChange`]).
    pub(crate) fn starting_at(mut self, seq: u64, digest: Digest) -> Self {
        self.base = (seq, digest);
        self
    }

    /// The checkpoint (seq, state digest) the epoch started from; (0, zero) at genesis.
    pub fn base(&self) -> (u64, Digest) {
        self.base
    }

    /// The epoch this set governs.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of validators, n.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a set has at least one validator.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Byzantine validators tolerated, f = floor((n - 1) / 3).
    pub fn max_faulty(&self) -> usize {
        Self::max_faulty_of(self.len())
    }

    /// Votes that make a certificate: ceil((n + f + 1) / 2), which is 2f + 1 when n = 3f + 1.
    ///
    /// Any two quorums intersect in at least f + 1 validators, hence in an honest one.
    pub fn quorum(&self) -> usize {
        Self::quorum_of(self.len())
    }

    /// f for a set of `n` validators (at least 1): floor((n - 1) / 3).
    pub fn max_faulty_of(n: usize) -> usize {
        n.saturating_sub(1) / 3
    }

    /// The quorum of a set of `n` validators: ceil((n + f + 1) / 2).
    pub fn quorum_of(n: usize) -> usize {
        (n + Self::max_faulty_of(n) + 2) / 2
    }

    /// Matching replies a client needs: f + 1, so at least one comes from an honest validator.
    pub fn reply_quorum(&self) -> usize {
        self.max_faulty() + 1
    }

    /// The primary of `view`: validator `view mod n`.
    pub fn primary(&self, view: u64) -> ReplicaId {
        // The remainder is < n <= u16::MAX.
        ReplicaId((view % self.len() as u64) as u16)
    }

    /// The id of a validator key, if it is one.
    pub fn id_of(&self, key: &PublicKey) -> Option<ReplicaId> {
        self.ids.get(key).copied()
    }

    /// The checked key of validator `id`.
    pub fn key(&self, id: ReplicaId) -> Option<&VerifyingKey> {
        self.keys.get(usize::from(id.0))
    }

    /// Every validator key, in id order.
    pub fn public_keys(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.keys.iter().map(VerifyingKey::public_key)
    }

    /// Every validator id, in order.
    pub fn ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (0..self.keys.len()).map(|index| ReplicaId(index as u16))
    }
}

/// The limits and timings of a validator. Every network-fed buffer is bounded by one of these.
///
/// Deserializes with serde (a host's config file can set any field; the others keep their
/// defaults, unknown fields are refused). [`Config::default`] leaves `chain_id` unset (all
/// zero), which [`Config::validate`] refuses: a network's id is never a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The network this replica belongs to.
    pub chain_id: ChainId,
    /// Most requests in one batch. Default 1024: large batches amortise the per-instance
    /// signatures; beyond ~1000 the batch digest and message size dominate.
    pub max_batch_ops: usize,
    /// Most request bytes (encoded) in one batch. Default 1 MiB.
    pub max_batch_bytes: usize,
    /// Longest a request waits for its batch to fill, in ms. Default 2 ms: below a
    /// loopback round trip, so light load is not slowed by batching.
    pub batch_delay_ms: u64,
    /// Log window L: sequence numbers in (low, low + L] may be in flight at once (the
    /// pipelining depth). Default 256, twice the checkpoint interval (as in Castro and
    /// Liskov's implementation).
    pub window: u64,
    /// Most requests the primary holds before it refuses more. Default 16384.
    pub max_pending_requests: usize,
    /// Most messages buffered per peer for sequence numbers above the window. Default 256.
    pub max_future_per_peer: usize,
    /// Largest encoded message accepted. Default 4 MiB (a full batch plus its envelope).
    pub max_message_bytes: usize,
    /// Largest operation in one request. Default 64 KiB.
    pub max_request_bytes: usize,
    /// Clients remembered for exactly-once execution. Default 100000. At the bound the
    /// client with the lowest last request number is forgotten and the table's floor rises
    /// to that number: requests at or below the floor from unknown clients are refused as
    /// stale, so nothing executes twice. The floor never exceeds a remembered client's number,
    /// so clients that number requests by time (the `Client` default) stay above it, and one
    /// client numbering near `u64::MAX` cannot lock the others out: raising the floor past
    /// honest clients takes `max_clients` + 1 keys, each with a request executed, held in the
    /// table at once (bound that with admission at the gateways if clients are untrusted).
    pub max_clients: usize,
    /// A checkpoint every this many sequence numbers, K. Default 128, half the window, so the
    /// primary keeps proposing while the last checkpoint becomes stable. A checkpoint costs
    /// a snapshot of the application (with the key-value store, a copy and a hash of the
    /// whole state): at 32, one round in 32 stalled on it and the p99 latency of a loaded
    /// cluster tripled; at 128 fewer than 1 % of rounds pay it.
    pub checkpoint_interval: u64,
    /// How long a backup waits for a pending request or an accepted proposal to commit before
    /// it asks for a new primary, in ms; also how long it waits for the new view once a quorum
    /// asked. Default 500 ms.
    pub view_timeout_ms: u64,
    /// Each consecutive view that fails doubles the timeout, up to this factor. A view fails
    /// when its new view does not come in time, or when it times out before delivering
    /// anything (Castro and Liskov 2002, section 4.5.2). A delivery resets it if the view has
    /// lasted the timeout, or if it leaves nothing waiting (no proposal, no watched request).
    /// Default 8 (4 s with the default timeout).
    pub max_timeout_factor: u64,
    /// How long without progress before a replica tells its peers what it lacks, in ms.
    /// Default 100 ms: well under the view timeout, so a lost message is repaired before it
    /// costs a view.
    pub retransmit_ms: u64,
    /// How often an idle replica reports its progress, so one that missed the last commits
    /// learns it is behind. Default 1000 ms.
    pub heartbeat_ms: u64,
    /// Signature checks a second each validator peer may make this replica run on
    /// view-change traffic beyond what moves it: each view change's own signature, and every
    /// check of a view change or new view from that peer that fails. A peer holds at most a
    /// second's worth; a failed check larger than what it held is paid back before it is
    /// heard again. Default 100: an honest peer signs one view change per view it moves to
    /// (views last at least `view_timeout_ms`) and never sends one that fails, so it never
    /// runs short; a faulty one costs at most 100 checks a second on average (about 1 % of a
    /// core at ~50 µs a check), where a view change with a full window of certificates cost
    /// a quorum of checks per certificate each time it came.
    pub view_change_checks_per_sec: u64,
    /// Committed batches (with their QCs) kept below the low watermark to serve replicas that
    /// fell behind; at least a window. Default 256. A replica more than a window behind the
    /// stable checkpoint fetches the checkpoint's state instead.
    pub retained_batches: usize,
    /// Bytes per chunk of a state snapshot in transfer. Default 256 KiB: well inside a
    /// message, large enough that a chunk's proof and envelope are noise.
    pub snapshot_chunk_bytes: u32,
    /// Largest application snapshot accepted in a state transfer (the receiver holds it in
    /// memory until it is whole). Default 256 MiB.
    pub max_snapshot_bytes: u64,
    /// Commit on the fast path: once the pre-prepare and a matching prepare from every other
    /// validator are in, commit without waiting for the commit round (which still runs, for
    /// replicas that lack a vote). Default true. It saves one message delay when all n
    /// validators are up and prompt, and nothing otherwise; each replica may choose alone,
    /// since every QC verifies either way ([`crate::CommitPath`]).
    pub fast_path: bool,
    /// The gateways whose attested requests this validator orders at genesis
    /// (gateway-attested mode, issue 14): one signature per group of requests instead of
    /// one per request ([`crate::Attestation`]); governance changes them from epoch to
    /// epoch ([`crate::SetChange::AddGateway`], [`crate::Replica::attesting_gateways`]).
    /// Empty (the default) is end to end: every request carries its client's signature,
    /// and an attested one is refused as [`crate::Error::UnknownGateway`]. Part of the
    /// chain id ([`ChainId::for_network`]): validators that list different gateways sign
    /// for different chains, so a mismatch fails closed (keep the genesis list as it was
    /// when gateways change later).
    pub attesting_gateways: Vec<PublicKey>,
    /// Whether a committed conviction removes the offender from the set at the next epoch
    /// boundary ([`crate::NextEpoch`]). Default true: equivocation is the one fault a
    /// validator cannot commit by accident (its signer refuses a second vote for a slot, also
    /// across restarts), so evidence of it is proof of a faulty or compromised key. Part of
    /// [`Config::agreed`]: every validator must decide the same.
    pub slash_equivocators: bool,
    /// Who approves a change of the validator set ([`crate::Reconfiguration`]). Empty (the
    /// default): 2f + 1 validators of the current epoch, the quorum that commits anything.
    /// Otherwise these operator keys, a strict majority of them. Part of the chain id
    /// ([`ChainId::for_network`]), as a set.
    pub governors: Vec<PublicKey>,
    /// The bug planted in this replica, for the mutation test only ([`crate::mutants`]).
    #[cfg(feature = "mutants")]
    #[serde(skip)]
    pub mutant: Option<crate::mutants::Mutant>,
}

impl Default for Config {
    /// The defaults above, with `chain_id` unset (all zero: set it before use).
    fn default() -> Self {
        Config {
            chain_id: ChainId(Digest([0; 32])),
            max_batch_ops: 1024,
            max_batch_bytes: 1 << 20,
            batch_delay_ms: 2,
            window: 256,
            max_pending_requests: 16384,
            max_future_per_peer: 256,
            max_message_bytes: 4 << 20,
            max_request_bytes: 64 << 10,
            max_clients: 100_000,
            checkpoint_interval: 128,
            view_timeout_ms: 500,
            max_timeout_factor: 8,
            retransmit_ms: 100,
            heartbeat_ms: 1000,
            view_change_checks_per_sec: 100,
            retained_batches: 256,
            snapshot_chunk_bytes: 256 << 10,
            max_snapshot_bytes: 256 << 20,
            fast_path: true,
            attesting_gateways: Vec::new(),
            slash_equivocators: true,
            governors: Vec::new(),
            #[cfg(feature = "mutants")]
            mutant: None,
        }
    }
}

impl Config {
    /// The defaults above for `chain_id`.
    pub fn new(chain_id: ChainId) -> Self {
        Config {
            chain_id,
            ..Config::default()
        }
    }

    /// The parameters every validator of a network must share, in a fixed order: where
    /// checkpoints fall and what their digests cover (`checkpoint_interval`,
    /// `snapshot_chunk_bytes`, `max_clients`, which decides the exactly-once floor), what a
    /// pre-prepare may hold (`max_batch_ops`, `max_batch_bytes`, `max_request_bytes`), the
    /// window view changes are checked against (`window`), and the largest message and
    /// snapshot a replica takes (`max_message_bytes`, `max_snapshot_bytes`), and whether
    /// convictions change the set (`slash_equivocators`). The others are each node's own
    /// (timeouts, buffers, retention).
    pub fn agreed(&self) -> [u64; 10] {
        [
            self.checkpoint_interval,
            u64::from(self.snapshot_chunk_bytes),
            self.max_clients as u64,
            self.max_batch_ops as u64,
            self.max_batch_bytes as u64,
            self.max_request_bytes as u64,
            self.window,
            self.max_message_bytes as u64,
            self.max_snapshot_bytes,
            u64::from(self.slash_equivocators),
        ]
    }

    /// The most bytes a message or log record can take with `validators` validators: the
    /// larger of a new view carrying a full window of prepared certificates
    /// ([`crate::NewView::max_bytes`]) and a full batch with its certificate (a `Committed`
    /// message, or the `Prepared` and `Committed` records). Every other message or record is
    /// smaller: a view change carries less than a new view, the rest do not grow with the set.
    pub fn largest_message_bytes(&self, validators: usize) -> usize {
        let window = usize::try_from(self.window).unwrap_or(usize::MAX);
        let new_view = crate::sizes::new_view(ValidatorSet::quorum_of(validators), window);
        let batch = crate::sizes::max_certified_batch_bytes(
            (validators, ValidatorSet::quorum_of(validators)),
            self.max_batch_ops,
            self.max_batch_bytes,
        );
        new_view.max(batch)
    }

    /// The most validators whose largest message ([`Config::largest_message_bytes`]) fits
    /// `max_message_bytes`; 0 if not even one does. With the defaults: 108.
    pub fn max_validators(&self) -> usize {
        let fits = |n: usize| self.largest_message_bytes(n) <= self.max_message_bytes;
        // The size grows with n: find the last n that fits.
        let (mut low, mut high) = (0usize, usize::from(u16::MAX));
        if fits(high) {
            return high;
        }
        while low + 1 < high {
            let middle = low + (high - low) / 2;
            match fits(middle) {
                true => low = middle,
                false => high = middle,
            }
        }
        low
    }

    /// [`Config::validate`]; that each attesting gateway's key is valid, listed once and no
    /// validator's; and that the largest message `validators` make fits `max_message_bytes`
    /// (and so the host's log records, whose limit is derived from it).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] as [`Config::validate`]; [`ConfigError::MessagesTooLarge`]
    /// when the set is too large for the window and message size.
    pub fn validate_for(&self, validators: &ValidatorSet) -> Result<(), ConfigError> {
        self.validate()?;
        // An attested request carries its path too (at most 32 hashes): the largest must
        // still fit a batch, or a gateway would forward what every validator refuses.
        let attested = crate::envelope::REQUEST_OVERHEAD + crate::envelope::ATTESTATION_OVERHEAD;
        if !self.attesting_gateways.is_empty()
            && self.max_request_bytes.saturating_add(attested + 32 * 32) > self.max_batch_bytes
        {
            return Err(ConfigError::Invalid(
                "gateway-attested: max_request_bytes plus an attested request's 1,188 bytes of key, signature, numbers and path must fit max_batch_bytes",
            ));
        }
        for (index, gateway) in self.attesting_gateways.iter().enumerate() {
            if validators.id_of(gateway).is_some()
                || self
                    .attesting_gateways
                    .iter()
                    .take(index)
                    .any(|g| g == gateway)
                || gateway.check().is_err()
            {
                return Err(ConfigError::Invalid(
                    "attesting_gateways: each gateway key must be valid, listed once, and no validator's",
                ));
            }
        }
        for (index, governor) in self.governors.iter().enumerate() {
            if self.governors.iter().take(index).any(|g| g == governor)
                || governor.verifying_key().is_err()
            {
                return Err(ConfigError::Invalid(
                    "governors: each key must be a valid Ed25519 key, listed once",
                ));
            }
        }
        let needed = self.largest_message_bytes(validators.len());
        if needed > self.max_message_bytes {
            return Err(ConfigError::MessagesTooLarge {
                validators: validators.len(),
                needed,
                max_message_bytes: self.max_message_bytes,
                max_validators: self.max_validators(),
            });
        }
        Ok(())
    }

    /// Checks that the limits fit together and that `chain_id` is set.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first limit that does not hold.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chain_id == ChainId(Digest([0; 32])) {
            return Err(ConfigError::Invalid(
                "chain_id is unset: derive it from the network's name",
            ));
        }
        let positive = [
            (self.max_batch_ops, "max_batch_ops must be at least 1"),
            (self.max_batch_bytes, "max_batch_bytes must be at least 1"),
            (
                self.max_pending_requests,
                "max_pending_requests must be at least 1",
            ),
            (
                self.max_request_bytes,
                "max_request_bytes must be at least 1",
            ),
            (self.max_clients, "max_clients must be at least 1"),
            (
                self.max_future_per_peer,
                "max_future_per_peer must be at least 1, or a replica a message behind stalls",
            ),
        ];
        for (value, why) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(why));
            }
        }
        if self.window == 0 {
            return Err(ConfigError::Invalid("window must be at least 1"));
        }
        if self.checkpoint_interval == 0 || self.checkpoint_interval > self.window {
            return Err(ConfigError::Invalid(
                "checkpoint_interval must be in [1, window], or the window can never move",
            ));
        }
        if self.view_timeout_ms == 0 || self.retransmit_ms == 0 || self.heartbeat_ms == 0 {
            return Err(ConfigError::Invalid(
                "view_timeout_ms, retransmit_ms and heartbeat_ms must be at least 1",
            ));
        }
        if (self.retained_batches as u64) < self.window {
            return Err(ConfigError::Invalid(
                "retained_batches must be at least the window, or a replica a window behind can neither replay nor transfer",
            ));
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes as usize + crate::envelope::BATCH_OVERHEAD
                > self.max_message_bytes
        {
            return Err(ConfigError::Invalid(
                "snapshot_chunk_bytes must be at least 1 and fit a message with 4 KiB to spare",
            ));
        }
        if self.view_change_checks_per_sec == 0 {
            return Err(ConfigError::Invalid(
                "view_change_checks_per_sec must be at least 1, or no view change is ever checked",
            ));
        }
        if self.max_timeout_factor == 0 {
            return Err(ConfigError::Invalid(
                "max_timeout_factor must be at least 1",
            ));
        }
        // A request counts its key, signature and numbers too: one whose operation is within
        // them of the batch limit would be proposed alone and refused by every backup.
        if self
            .max_request_bytes
            .saturating_add(crate::envelope::REQUEST_OVERHEAD)
            > self.max_batch_bytes
        {
            return Err(ConfigError::Invalid(
                "max_request_bytes plus a request's 117 bytes of key, signature and numbers must fit max_batch_bytes, or a request never fits a batch",
            ));
        }
        if self.max_message_bytes < self.max_batch_bytes + crate::envelope::BATCH_OVERHEAD {
            return Err(ConfigError::Invalid(
                "max_message_bytes must hold a full batch (max_batch_bytes + 4 KiB)",
            ));
        }
        Ok(())
    }
}
