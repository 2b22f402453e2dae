//! pbft-core: Practical Byzantine Fault Tolerance with signatures, as a sans-IO state machine.
//!
//! n = 3f + 1 validators order client requests into batches; every committed batch carries a
//! [`QuorumCertificate`] that anyone holding the [`ValidatorSet`] can verify offline, and a
//! client proves its request is in a batch with an [`InclusionProof`].
//!
//! The crate is `no_std` + `alloc` and does no I/O: a [`Replica`] takes inputs with the current
//! time and returns [`Output`]s for the host to carry out, in order. A [`Client`] builds signed
//! requests and accepts a result from f + 1 matching signed replies.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

extern crate alloc;

mod certificate;
mod client;
mod config;
mod crypto;
pub mod envelope;
mod error;
mod merkle;
mod message;
mod metrics;
mod replica;
mod state;
mod statement;
mod view_change;

// The validator and the contract on what it hands its host.
pub use replica::{
    CheckpointState, ClientRecord, Delivery, Destination, ExecutedState, Install, Output, Record,
    Replica,
};

// The client role.
pub use client::{
    Client, ClientError, DEFAULT_MAX_REPLY_BYTES, DEFAULT_RETRANSMIT_MS, Outcome, ReplyCache,
    verify_reply, verify_reply_cached,
};

// Identities, the validator set and limits.
pub use config::{ChainId, Config, ConfigError, ReplicaId, ValidatorSet};
pub use crypto::{
    BatchVerifier, CryptoError, Digest, Hasher, Keypair, PublicKey, Signature, VerifyingKey,
    verify_all,
};

// Signed statements and the wire.
pub use envelope::{BATCH_OVERHEAD, DecodeError, PROTOCOL_VERSION};
pub use message::{COMMITTED, HAVE_BATCH, Message, PREPARED, Status};
pub use state::{FetchState, Manifest, StateChunk};
pub use statement::{
    Batch, Phase, PrePrepare, Reply, Request, Vote, reply_leaf, reply_root_digest, vote_digest,
};

// Certificates and the offline checks anyone holding the validator set can run.
pub use certificate::{
    CertificateError, Committed, Evidence, QuorumCertificate, verify_evidence, verify_inclusion,
    verify_qc,
};
pub use merkle::InclusionProof;
pub use view_change::{
    NewView, Plan, Prepared, StableCheckpoint, ViewChange, ViewChangeError, null_digest, plan,
    verify_checkpoint, verify_new_view, verify_view_change,
};

// Errors and counters.
pub use error::Error;
pub use metrics::Metrics;
