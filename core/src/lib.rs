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
mod clients;
mod config;
mod crypto;
mod error;
mod log;
mod merkle;
mod message;
mod metrics;
mod replica;
mod state;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
mod view_change;

pub use certificate::{
    CertificateError, Evidence, QuorumCertificate, verify_evidence, verify_inclusion, verify_qc,
};
pub use client::{
    Client, ClientError, DEFAULT_MAX_REPLY_BYTES, DEFAULT_RETRANSMIT_MS, Outcome, ReplyCache,
    verify_reply, verify_reply_cached,
};
pub use clients::ClientRecord;
pub use config::{ChainId, Config, ConfigError, ReplicaId, ValidatorSet};
pub use crypto::{
    BatchVerifier, CryptoError, Digest, Hasher, Keypair, PublicKey, Signature, VerifyingKey,
    verify_all,
};
pub use error::Error;
pub use merkle::InclusionProof;
pub use message::{
    BATCH_OVERHEAD, Batch, COMMITTED, Committed, DecodeError, HAVE_BATCH, Message, PREPARED,
    PROTOCOL_VERSION, Phase, PrePrepare, Reply, Request, Status, Vote, reply_leaf,
    reply_root_digest, vote_digest,
};
pub use metrics::Metrics;
pub use replica::{
    CheckpointState, Delivery, Destination, ExecutedState, Install, Output, Record, Replica,
};
pub use state::{FetchState, Manifest, StateChunk};
pub use view_change::{
    NewView, Plan, Prepared, StableCheckpoint, ViewChange, ViewChangeError, null_digest, plan,
    verify_checkpoint, verify_new_view, verify_view_change,
};
