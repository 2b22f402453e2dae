//! pbft-core: Practical Byzantine Fault Tolerance with signatures, as a sans-IO state machine.
//!
//! n = 3f + 1 validators order client requests into batches; every committed batch carries a
//! [`QuorumCertificate`] that anyone holding the [`ValidatorSet`] can verify offline, and a
//! client proves its request is in a batch with an [`InclusionProof`].
//!
//! The crate is `no_std` + `alloc` and does no I/O: a [`Replica`] takes inputs with the current
//! time and returns [`Output`]s for the host to carry out, in order. A [`Client`] builds signed
//! requests and accepts a result from f + 1 matching signed replies.
//!
//! # Driving a replica
//!
//! A host owns the clock, the sockets and the disk. It hands each input to the replica with
//! the time in ms, then drains [`Replica::poll_output`] and acts on each output in order
//! (a [`Output::Persist`] is durable before any later [`Output::Send`] leaves), and calls
//! [`Replica::handle_timeout`] once [`Replica::poll_timeout`] has passed. Four replicas wired
//! in memory, one request:
//!
//! ```
//! use pbft_core::{ChainId, Config, Destination, Keypair, Output, Replica, Request, ValidatorSet};
//!
//! # fn main() -> Result<(), Box<dyn core::error::Error>> {
//! let chain = ChainId::from_name("doc");
//! let keys: Vec<Keypair> = (1..=4).map(|i| Keypair::from_seed(&[i; 32])).collect();
//! let public: Vec<_> = keys.iter().map(Keypair::public_key).collect();
//! let set = ValidatorSet::new(0, &public)?;
//! let mut replicas = Vec::new();
//! for key in &keys {
//!     let key = Keypair::from_seed(&key.seed());
//!     replicas.push(Replica::new(Config::new(chain), set.clone(), key)?);
//! }
//! let client = Keypair::from_seed(&[9; 32]);
//! let mut now = 0; // ms on the host's monotonic clock
//! replicas[0].submit(now, Request::new(&chain, &client, 1, b"put k v".to_vec()))?;
//!
//! let mut executed = [0u64; 4];
//! while executed.iter().any(|&seq| seq < 1) {
//!     let mut wire = Vec::new();
//!     for (index, replica) in replicas.iter_mut().enumerate() {
//!         while let Some(output) = replica.poll_output() {
//!             match output {
//!                 // A real host appends record.encode() to its log and fsyncs it before
//!                 // the sends that follow leave.
//!                 Output::Persist(_record) => {}
//!                 Output::Send { to, bytes } => wire.push((index, to, bytes)),
//!                 Output::Deliver(delivery) => {
//!                     // Execute delivery.execute in order; one result each.
//!                     let results = vec![b"ok".to_vec(); delivery.execute.len()];
//!                     let snapshot = delivery.checkpoint.then(Vec::new);
//!                     replica.executed(now, delivery.seq, results, snapshot)?;
//!                     executed[index] = delivery.seq;
//!                 }
//!                 _ => {} // evidence, installs: see `Output`
//!             }
//!         }
//!     }
//!     for (from, to, bytes) in wire {
//!         let targets: Vec<usize> = match to {
//!             Destination::Validator(id) => vec![usize::from(id.0)],
//!             Destination::AllValidators => (0..4).filter(|&i| i != from).collect(),
//!             _ => Vec::new(), // replies go to the client
//!         };
//!         for target in targets {
//!             // Errors say why a message was refused; the replica goes on either way.
//!             let _ = replicas[target].handle_message(now, &public[from], &bytes);
//!         }
//!     }
//!     now += 1;
//!     for replica in &mut replicas {
//!         if replica.poll_timeout().is_some_and(|at| at <= now) {
//!             replica.handle_timeout(now);
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `core/examples/udp.rs` runs the same loop over UDP sockets, one thread per replica.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

extern crate alloc;

/// Whether `config` plants the test-only bug `$mutant` ([`mutants`]); always `false` without
/// the `mutants` feature, so the checks compile away.
macro_rules! planted {
    ($config:expr, $mutant:ident) => {{
        #[cfg(feature = "mutants")]
        let planted = $config.mutant == Some($crate::mutants::Mutant::$mutant);
        #[cfg(not(feature = "mutants"))]
        let planted = {
            let _ = &$config;
            false
        };
        planted
    }};
}

mod certificate;
mod client;
mod config;
mod crypto;
pub mod envelope;
mod epoch;
mod error;
mod gateway;
mod governance;
mod merkle;
mod message;
mod metrics;
#[cfg(feature = "mutants")]
#[doc(hidden)]
pub mod mutants;
mod new_view;
mod refusal;
mod replica;
mod sizes;
mod state;
mod statement;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
mod view_change;

// The validator and the contract on what it hands its host.
pub use replica::{
    CheckpointState, ClientRecord, Delivery, Destination, ExecutedState, Fence, Install, JoinError,
    Output, Record, RecoveryReport, Replica,
};

// The client role.
pub use client::{
    Answer, Client, ClientError, DEFAULT_MAX_REPLY_BYTES, DEFAULT_RETRANSMIT_MS, Outcome, Refused,
    ReplyCache, verify_reply, verify_reply_cached,
};

// The gateway role.
pub use gateway::{Gateway, GatewayConfig, GatewayMetrics, GatewayOutput, Shed};

// Identities, the validator set and limits.
pub use config::{ChainId, Config, ConfigError, ReplicaId, ValidatorSet};
pub use crypto::{
    BatchVerifier, CheckPool, CryptoError, CurveBackend, Digest, Hasher, InlineChecks, Keypair,
    PublicKey, Signature, VerifyingKey, curve_backend, verify_all,
};

// Signed statements and the wire.
pub use envelope::{BATCH_OVERHEAD, DecodeError, PROTOCOL_VERSION, REQUEST_OVERHEAD};
pub use message::{
    BatchAt, COMMITTED, FetchBatches, HAVE_BATCH, Message, PREPARED, RecoveryAnswer, RecoveryQuery,
    Status,
};
pub use state::{FetchState, Manifest, SnapshotJob, StateChunk, TakenSnapshot};
pub use statement::{
    Attestation, Batch, Evidence, MAX_BATCH_EVIDENCE, Phase, PrePrepare, Reply, Request, Vote,
    attest, attestation_digest, reply_leaf, reply_root_digest, vote_digest,
};

// Epochs: the validator set as replicated state, and the proof of each change.
pub use epoch::{
    EpochChange, EpochState, NextEpoch, boundary_after, verify_epoch_change,
    verify_qc_across_epochs,
};

// Reconfiguration by governance: changes of the set, approved and decided when committed.
pub use governance::{
    Approval, Decision, MAX_SET_CHANGES, Misfit, RECONFIGURATION_TAG, Reconfiguration, Refusal,
    SetChange, approval_digest, approve,
};

// Certificates and evidence.
pub use certificate::{CertificateError, CommitPath, Committed, QuorumCertificate};
pub use merkle::InclusionProof;
pub use new_view::{NewView, Plan, null_digest, plan};
pub use refusal::{
    REFUSALS_PER_CLIENT_PER_SECOND, REFUSALS_PER_SECOND, RefusalReason, RequestRefusal,
    refusal_digest,
};
pub use view_change::{
    Prepared, PreparedClaim, StableCheckpoint, ViewChange, ViewChangeError, ViewChangeSummary,
};

// The offline checks: anyone holding the validator set verifies what a replica hands out.
pub use certificate::{verify_evidence, verify_inclusion, verify_qc};
pub use new_view::verify_new_view;
pub use view_change::{verify_checkpoint, verify_view_change};

// Errors and counters.
pub use error::Error;
pub use metrics::Metrics;
