//! The contract between a node and what it replicates: [`Application`] executes committed
//! batches inside the node's store transaction, and [`AppError`] says why it could not.

use pbft_core::Evidence;
use redb::{ReadTransaction, WriteTransaction};

use crate::kv::SnapshotError;

/// What a node replicates, with its state in the node's store (`state.redb`, see
/// [`crate::store`]): its writes go through the round's transaction, so they become durable
/// atomically with the exactly-once table and the executed seq, and a restarted node resumes
/// from its own disk. An application keeps its state in tables of its own names (the store's
/// own begin with `pbft.`). Execution must be deterministic, and a snapshot must be the same
/// bytes on every replica in the same state.
pub trait Application {
    /// Executes a batch's operations in order, writing through `tx`; one result per
    /// operation.
    fn execute(&mut self, tx: &WriteTransaction, ops: &[&[u8]]) -> Result<Vec<Vec<u8>>, AppError>;
    /// Takes the equivocation evidence committed in batch `seq` (never empty), before the
    /// batch's operations execute, in the same transaction. Every correct replica gets the same
    /// evidence at the same seq, so what the application decides from it (its punishment
    /// policy) is replicated state like the rest. A piece may come again in a later batch
    /// ([`pbft_core::Batch::evidence`]): decide per (epoch, offender), not per piece.
    fn convict(
        &mut self,
        tx: &WriteTransaction,
        seq: u64,
        evidence: &[Evidence],
    ) -> Result<(), AppError>;
    /// The state's canonical bytes as of `tx`.
    fn snapshot(&self, tx: &ReadTransaction) -> Result<Vec<u8>, AppError>;
    /// Replaces the state with a snapshot fetched from peers (checked against their signed
    /// checkpoint), writing through `tx`.
    fn install(&mut self, tx: &WriteTransaction, snapshot: &[u8]) -> Result<(), AppError>;
    /// Number of entries in the state as of `tx`, for the start-up line.
    fn entries(&self, tx: &ReadTransaction) -> Result<u64, AppError>;
}

/// Why an application could not execute, snapshot or install.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store failed.
    #[error("{0}")]
    Store(redb::Error),
    /// A fetched snapshot is not one this application can read.
    #[error("{0}")]
    Snapshot(SnapshotError),
}

impl From<redb::Error> for AppError {
    fn from(err: redb::Error) -> Self {
        AppError::Store(err)
    }
}
