//! Replicated state at a checkpoint, and how it travels to a replica that fell behind.
//!
//! At every checkpoint the host hands the core a snapshot of its application (canonical bytes);
//! the core adds its own replicated state (the exactly-once table) and digests both into the
//! [`Manifest`]: the application bytes are cut into chunks of `chunk_bytes`, whose Merkle root
//! the manifest carries, so a replica fetching the state checks the manifest against the
//! stable checkpoint's digest and every chunk against the root on its own — from any peer,
//! trusting none.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::config::ChainId;
use crate::crypto::{Digest, Hasher};
use crate::epoch::{EpochState, checkpoint_digest};
use crate::merkle::{self, InclusionProof};

/// What a checkpoint's digest commits to: everything but the application's bytes, which are
/// fetched chunk by chunk against `app_root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// Merkle root over the application snapshot's chunks.
    pub app_root: Digest,
    /// The application snapshot's length in bytes.
    pub app_len: u64,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_bytes: u32,
    /// The exactly-once table, encoded.
    pub clients: Vec<u8>,
    /// The validator set's part of the replicated state: the epoch and any scheduled change.
    pub epoch: EpochState,
}

impl Manifest {
    /// The checkpoint digest the replicas sign: the seq, [`Manifest::body_digest`] and the
    /// epoch state, so an [`crate::EpochChange`] proves the epoch state without the rest.
    pub fn digest(&self, chain: &ChainId) -> Digest {
        checkpoint_digest(chain, self.seq, &self.body_digest(), &self.epoch)
    }

    /// The digest of everything but the epoch state: the application's chunks and the
    /// exactly-once table.
    pub fn body_digest(&self) -> Digest {
        Hasher::new(b"pbft/v2/checkpoint-body")
            .digest(&self.app_root)
            .u64(self.app_len)
            .u64(u64::from(self.chunk_bytes))
            .bytes(&self.clients)
            .finish()
    }

    /// How many chunks the application snapshot has.
    pub fn chunks(&self) -> u64 {
        match self.chunk_bytes {
            0 => 0,
            size => self.app_len.div_ceil(u64::from(size)),
        }
    }

    /// The length chunk `index` must have.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(u64::from(self.chunk_bytes));
        self.app_len
            .saturating_sub(start)
            .min(u64::from(self.chunk_bytes))
    }
}

/// One chunk of an application snapshot with its path to the manifest's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChunk {
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// The chunk's position.
    pub index: u32,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// Path to `Manifest::app_root`.
    pub proof: InclusionProof,
}

/// A request for a checkpoint's manifest (`chunk: None`) or one of its chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchState {
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// Which chunk, or the manifest.
    pub chunk: Option<u32>,
}

/// The leaf of chunk `index` in the snapshot's Merkle tree.
pub(crate) fn chunk_leaf(index: u32, bytes: &[u8]) -> Digest {
    Hasher::new(b"pbft/v1/state-chunk")
        .u64(u64::from(index))
        .bytes(bytes)
        .finish()
}

/// A checkpoint's full state as this replica holds it, to serve peers.
pub(crate) struct Snapshot {
    pub(crate) manifest: Manifest,
    pub(crate) app: Vec<u8>,
    tree: merkle::Tree,
}

impl Snapshot {
    /// Cuts `app` into chunks and digests everything.
    pub(crate) fn new(
        seq: u64,
        app: Vec<u8>,
        (clients, epoch): (Vec<u8>, EpochState),
        chunk_bytes: u32,
    ) -> Snapshot {
        let leaves: Vec<Digest> = app
            .chunks(chunk_bytes.max(1) as usize)
            .enumerate()
            .map(|(index, bytes)| chunk_leaf(index as u32, bytes))
            .collect();
        let tree = merkle::Tree::new(&leaves);
        Snapshot {
            manifest: Manifest {
                seq,
                app_root: tree.root(),
                app_len: app.len() as u64,
                chunk_bytes,
                clients,
                epoch,
            },
            app,
            tree,
        }
    }

    /// Chunk `index` with its proof.
    pub(crate) fn chunk(&self, index: u32) -> Option<StateChunk> {
        let size = self.manifest.chunk_bytes.max(1) as usize;
        let bytes = self.app.chunks(size).nth(index as usize)?.to_vec();
        Some(StateChunk {
            seq: self.manifest.seq,
            index,
            bytes,
            proof: self.tree.prove(index as usize)?,
        })
    }
}

/// A checkpoint's state without its digest yet: the replica's own part (the exactly-once
/// table as of `seq`), waiting for the application's bytes as of `seq`. From
/// [`Replica::executed_deferring`](crate::Replica::executed_deferring); `Send`, so a host may
/// take the snapshot and digest it on a thread of its own ([`SnapshotJob::finish`]) while the
/// replica goes on, and hand the result back with
/// [`Replica::snapshot_taken`](crate::Replica::snapshot_taken).
#[derive(Debug)]
pub struct SnapshotJob {
    pub(crate) seq: u64,
    /// Which deferral this is: a job the replica cancelled and deferred again at the same
    /// seq (after a repair) is told from the new one by it.
    pub(crate) id: u64,
    pub(crate) clients: Vec<u8>,
    pub(crate) epoch: EpochState,
    pub(crate) chunk_bytes: u32,
}

impl SnapshotJob {
    /// The checkpoint's seq: the application's bytes must be its state after this seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Cuts `app` (the application's canonical bytes at [`SnapshotJob::seq`]) into chunks
    /// and digests it all: the work that grows with the state, O(`app.len()`) of hashing.
    pub fn finish(self, app: Vec<u8>) -> TakenSnapshot {
        TakenSnapshot {
            snapshot: Snapshot::new(self.seq, app, (self.clients, self.epoch), self.chunk_bytes),
            job: self.id,
        }
    }
}

/// A checkpoint's state, digested ([`SnapshotJob::finish`]), for
/// [`Replica::snapshot_taken`](crate::Replica::snapshot_taken).
pub struct TakenSnapshot {
    pub(crate) snapshot: Snapshot,
    /// [`SnapshotJob::id`].
    pub(crate) job: u64,
}

impl TakenSnapshot {
    /// The checkpoint's seq.
    pub fn seq(&self) -> u64 {
        self.snapshot.manifest.seq
    }

    /// The application's bytes.
    pub fn app(&self) -> &[u8] {
        &self.snapshot.app
    }

    /// The core's replicated state there (the exactly-once table and the epoch state), in
    /// the canonical encoding [`crate::CheckpointState::core`] takes back: opaque to hosts.
    pub fn core_state(&self) -> Vec<u8> {
        let manifest = &self.snapshot.manifest;
        encode_core_state(&manifest.clients, &manifest.epoch)
    }
}

impl core::fmt::Debug for TakenSnapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TakenSnapshot")
            .field("seq", &self.snapshot.manifest.seq)
            .field("app_len", &self.snapshot.manifest.app_len)
            .finish()
    }
}

/// The core's replicated state at a checkpoint as hosts keep it: the exactly-once table and
/// the epoch state.
pub(crate) fn encode_core_state(clients: &[u8], epoch: &EpochState) -> Vec<u8> {
    postcard::to_allocvec(&(serde_bytes::Bytes::new(clients), epoch)).unwrap_or_default()
}

/// Reads [`encode_core_state`]'s bytes back.
pub(crate) fn decode_core_state(bytes: &[u8]) -> Option<(Vec<u8>, EpochState)> {
    let (clients, epoch): (serde_bytes::ByteBuf, EpochState) = postcard::from_bytes(bytes).ok()?;
    Some((clients.into_vec(), epoch))
}

/// Whether `chunk` is chunk `chunk.index` of the snapshot `manifest` describes.
pub(crate) fn chunk_matches(manifest: &Manifest, chunk: &StateChunk) -> bool {
    let index = u64::from(chunk.index);
    chunk.seq == manifest.seq
        && index < manifest.chunks()
        && chunk.bytes.len() as u64 == manifest.chunk_len(index)
        && chunk.proof.index == chunk.index
        && u64::from(chunk.proof.count) == manifest.chunks()
        && merkle::root_from_proof(&chunk_leaf(chunk.index, &chunk.bytes), &chunk.proof)
            == Some(manifest.app_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> ChainId {
        ChainId::from_name("state-tests")
    }

    #[test]
    fn every_chunk_verifies_and_any_change_is_caught() {
        let app: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let epoch = EpochState::default();
        let snapshot = Snapshot::new(64, app.clone(), (alloc::vec![1, 2, 3], epoch), 96);
        let manifest = &snapshot.manifest;
        assert_eq!(manifest.chunks(), 11);
        let mut rebuilt = Vec::new();
        for index in 0..manifest.chunks() as u32 {
            let chunk = snapshot.chunk(index).unwrap();
            assert!(chunk_matches(manifest, &chunk), "chunk {index}");
            rebuilt.extend_from_slice(&chunk.bytes);
            let mut flipped = chunk.clone();
            flipped.bytes[0] ^= 1;
            assert!(!chunk_matches(manifest, &flipped), "flipped chunk {index}");
            let mut moved = chunk.clone();
            moved.index = (index + 1) % 11;
            assert!(
                !chunk_matches(manifest, &moved),
                "chunk {index} at another index"
            );
        }
        assert_eq!(rebuilt, app);
        assert!(snapshot.chunk(11).is_none());
        // The digest covers every field a receiver relies on.
        let digest = manifest.digest(&chain());
        let mut other = manifest.clone();
        other.app_len += 1;
        assert_ne!(other.digest(&chain()), digest);
        let mut other = manifest.clone();
        other.clients.push(0);
        assert_ne!(other.digest(&chain()), digest);
        let mut other = manifest.clone();
        other.chunk_bytes = 97;
        assert_ne!(other.digest(&chain()), digest);
        let mut other = manifest.clone();
        other.epoch.next = Some(crate::epoch::NextEpoch {
            boundary: 128,
            validators: alloc::vec::Vec::new(),
            gateways: alloc::vec::Vec::new(),
        });
        assert_ne!(other.digest(&chain()), digest);
        let scheduled = other.digest(&chain());
        if let Some(next) = other.epoch.next.as_mut() {
            next.gateways.push(crate::crypto::PublicKey([9; 32]));
        }
        assert_ne!(
            other.digest(&chain()),
            scheduled,
            "the gateways are in the digest"
        );
        let core = encode_core_state(&manifest.clients, &manifest.epoch);
        assert_eq!(
            decode_core_state(&core),
            Some((manifest.clients.clone(), manifest.epoch.clone()))
        );
    }
}
