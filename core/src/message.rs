//! Wire messages, their canonical encoding and the digests their signatures cover.
//!
//! Signatures never cover encoded bytes: each covers a sha3-256 digest of a domain tag (the
//! message kind), the chain id, the epoch and the fields, built field by field, so encodings
//! may change between versions without changing what a signature means, and a signature of
//! one kind can never be replayed as another.

use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::certificate::QuorumCertificate;
use crate::config::{ChainId, ReplicaId};
use crate::crypto::{Digest, Hasher, Keypair, PublicKey, Signature};
use crate::merkle::{self, InclusionProof};
use crate::state::{FetchState, Manifest, StateChunk};
use crate::view_change::{NewView, StableCheckpoint, ViewChange};

/// The envelope version this build speaks; the first byte of every message.
pub const PROTOCOL_VERSION: u8 = 1;

/// Room for a pre-prepare's fields and envelope around its batch, in bytes.
pub const BATCH_OVERHEAD: usize = 4096;

/// A client's signed operation.
///
/// `client_seq` orders one client's requests: each executes once, only if its number is
/// above every number of that client executed before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client's key, which signed the request.
    pub client: PublicKey,
    /// Strictly increasing per client.
    pub client_seq: u64,
    /// The operation for the application, opaque to consensus.
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// The client's signature over [`Request::digest`].
    pub signature: Signature,
}

impl Request {
    /// Builds and signs a request.
    pub fn new(chain: &ChainId, client: &Keypair, client_seq: u64, op: Vec<u8>) -> Self {
        let digest = request_digest(chain, &client.public_key(), client_seq, &op);
        Request {
            client: client.public_key(),
            client_seq,
            op,
            signature: client.sign(&digest),
        }
    }

    /// What the client signs, and the request's leaf in the batch's Merkle tree.
    ///
    /// Requests carry no epoch: a client's operation means the same in every epoch.
    pub fn digest(&self, chain: &ChainId) -> Digest {
        request_digest(chain, &self.client, self.client_seq, &self.op)
    }

    /// Bytes this request adds to a batch, for the batch size limit.
    pub fn encoded_len(&self) -> usize {
        // key + signature + varints (at most 10 bytes each) + the operation.
        32 + 64 + 10 + 10 + self.op.len()
    }
}

fn request_digest(chain: &ChainId, client: &PublicKey, client_seq: u64, op: &[u8]) -> Digest {
    Hasher::new(b"pbft/v1/request")
        .digest(&chain.0)
        .bytes(&client.0)
        .u64(client_seq)
        .bytes(op)
        .finish()
}

/// An ordered list of requests decided together at one sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests, in execution order.
    pub requests: Vec<Request>,
}

impl Batch {
    /// The request digests, in order: the Merkle tree's leaves.
    pub fn leaves(&self, chain: &ChainId) -> Vec<Digest> {
        self.requests.iter().map(|r| r.digest(chain)).collect()
    }

    /// The batch digest: the Merkle root over the request digests.
    pub fn digest(&self, chain: &ChainId) -> Digest {
        merkle::root(&self.leaves(chain))
    }

    /// Proof that request `index` is in this batch, checked against a QC's digest with
    /// [`crate::verify_inclusion`].
    pub fn prove(&self, chain: &ChainId, index: usize) -> Option<InclusionProof> {
        merkle::prove(&self.leaves(chain), index)
    }
}

/// The statements a validator signs about a slot (view, seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// The primary proposes a batch for the slot.
    PrePrepare,
    /// A backup accepts the primary's proposal.
    Prepare,
    /// A validator saw a quorum prepare the batch and will commit it.
    Commit,
    /// A validator executed up to `seq` and reached the history digest; `view` is always 0,
    /// a checkpoint is the same in every view.
    Checkpoint,
}

impl Phase {
    fn domain(self) -> &'static [u8] {
        match self {
            Phase::PrePrepare => b"pbft/v1/pre-prepare",
            Phase::Prepare => b"pbft/v1/prepare",
            Phase::Commit => b"pbft/v1/commit",
            Phase::Checkpoint => b"pbft/v1/checkpoint",
        }
    }
}

/// A validator's signed statement that it proposes, prepares or commits `digest` at
/// (`view`, `seq`). Two valid votes of one phase by one validator for one slot with different
/// digests are evidence of equivocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Which statement this is.
    pub phase: Phase,
    /// The view the statement is made in.
    pub view: u64,
    /// The sequence number.
    pub seq: u64,
    /// The batch digest.
    pub digest: Digest,
    /// The validator that signed.
    pub replica: ReplicaId,
    /// Signature over [`Vote::signed_digest`].
    pub signature: Signature,
}

impl Vote {
    /// Builds and signs a vote.
    pub fn new(
        chain: &ChainId,
        epoch: u64,
        phase: Phase,
        slot: (u64, u64),
        digest: Digest,
        replica: ReplicaId,
        key: &Keypair,
    ) -> Self {
        let (view, seq) = slot;
        let signed = vote_digest(chain, epoch, phase, view, seq, &digest);
        Vote {
            phase,
            view,
            seq,
            digest,
            replica,
            signature: key.sign(&signed),
        }
    }

    /// The digest the signature covers.
    pub fn signed_digest(&self, chain: &ChainId, epoch: u64) -> Digest {
        vote_digest(chain, epoch, self.phase, self.view, self.seq, &self.digest)
    }
}

/// The digest a vote's signature covers; also what each QC signature covers.
pub fn vote_digest(
    chain: &ChainId,
    epoch: u64,
    phase: Phase,
    view: u64,
    seq: u64,
    digest: &Digest,
) -> Digest {
    Hasher::new(phase.domain())
        .digest(&chain.0)
        .u64(epoch)
        .u64(view)
        .u64(seq)
        .digest(digest)
        .finish()
}

/// The primary's proposal: its signed statement plus the batch itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// The signed statement; its phase is [`Phase::PrePrepare`].
    pub vote: Vote,
    /// The batch whose Merkle root is `vote.digest`.
    pub batch: Batch,
}

/// A validator's signed answer to a client.
///
/// A validator signs once per executed batch: the signature covers the Merkle root of the
/// batch's reply digests, and each reply carries its path to that root. This keeps signing
/// off the per-request path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The view the request committed in (tells the client the current primary).
    pub view: u64,
    /// The sequence number whose batch held the request.
    pub seq: u64,
    /// The client the reply is for.
    pub client: PublicKey,
    /// The request this answers.
    pub client_seq: u64,
    /// The application's result.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    /// Path from this reply's digest to the signed root.
    pub proof: InclusionProof,
    /// The validator that executed and signed.
    pub replica: ReplicaId,
    /// Signature over [`reply_root_digest`] of the root.
    pub signature: Signature,
}

impl Reply {
    /// The leaf digest of this reply in its batch's reply tree.
    pub fn leaf(&self, chain: &ChainId) -> Digest {
        reply_leaf(chain, &self.client, self.client_seq, &self.result)
    }
}

/// The leaf for one reply in a batch's reply tree.
pub fn reply_leaf(chain: &ChainId, client: &PublicKey, client_seq: u64, result: &[u8]) -> Digest {
    Hasher::new(b"pbft/v1/reply")
        .digest(&chain.0)
        .bytes(&client.0)
        .u64(client_seq)
        .bytes(result)
        .finish()
}

/// What a validator signs for all replies of one batch.
pub fn reply_root_digest(
    chain: &ChainId,
    epoch: u64,
    view: u64,
    seq: u64,
    root: &Digest,
) -> Digest {
    Hasher::new(b"pbft/v1/reply-root")
        .digest(&chain.0)
        .u64(epoch)
        .u64(view)
        .u64(seq)
        .digest(root)
        .finish()
}

/// Flag in [`Status::slots`]: the sender holds the slot's proposal and batch.
pub const HAVE_BATCH: u8 = 1;
/// Flag in [`Status::slots`]: the slot is prepared at the sender.
pub const PREPARED: u8 = 2;
/// Flag in [`Status::slots`]: the sender holds the slot's commit certificate.
pub const COMMITTED: u8 = 4;

/// What a validator has, sent when it stops making progress (and as a slow heartbeat), so
/// peers send it what it lacks. Unsigned: the transport authenticates the sender, and a lie
/// only costs the liar the answers it did not get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The sender's view.
    pub view: u64,
    /// Whether the sender runs `view` (false while it waits for its new view).
    pub normal: bool,
    /// The sender's stable checkpoint.
    pub stable: u64,
    /// The highest seq the sender executed.
    pub executed: u64,
    /// Flags for each seq from `executed + 1`, at most a window of them.
    pub slots: Vec<u8>,
}

/// A committed batch with its certificate, sent to a validator that is behind. Anyone may
/// send it: the certificate proves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The batch.
    pub batch: Batch,
    /// Its QC; `certificate.digest` is the batch digest.
    pub certificate: QuorumCertificate,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A client request (from the client, a gateway, or a validator forwarding it).
    Request(Request),
    /// A primary's proposal.
    PrePrepare(PrePrepare),
    /// A prepare, commit or checkpoint vote.
    Vote(Vote),
    /// A validator's reply to a client.
    Reply(Reply),
    /// A validator moves to a new view.
    ViewChange(ViewChange),
    /// A new primary starts its view.
    NewView(NewView),
    /// A validator's progress, asking peers for what it lacks.
    Status(Status),
    /// A committed batch for a validator that is behind.
    Committed(Committed),
    /// A stable checkpoint certificate for a validator that is behind.
    Checkpoint(StableCheckpoint),
    /// A request for a checkpoint's state, from a validator that is far behind.
    FetchState(FetchState),
    /// A checkpoint's manifest, checked against the stable checkpoint's digest.
    StateManifest(Manifest),
    /// A chunk of a checkpoint's application snapshot, checked against the manifest.
    StateChunk(StateChunk),
}

impl Message {
    /// Encodes into the versioned envelope: one version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(PROTOCOL_VERSION);
        // Serialising into a Vec fails only on allocation failure, which aborts anyway.
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Decodes one envelope of at most `max_len` bytes; trailing bytes are an error.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Message, DecodeError> {
        if bytes.len() > max_len {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (message, rest) =
            postcard::take_from_bytes::<Message>(body).map_err(|_| DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(message)
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::PrePrepare(_) => "pre-prepare",
            Message::Vote(vote) => match vote.phase {
                Phase::PrePrepare => "pre-prepare-vote",
                Phase::Prepare => "prepare",
                Phase::Commit => "commit",
                Phase::Checkpoint => "checkpoint",
            },
            Message::Reply(_) => "reply",
            Message::ViewChange(_) => "view-change",
            Message::NewView(_) => "new-view",
            Message::Status(_) => "status",
            Message::Committed(_) => "committed",
            Message::Checkpoint(_) => "stable-checkpoint",
            Message::FetchState(_) => "fetch-state",
            Message::StateManifest(_) => "state-manifest",
            Message::StateChunk(_) => "state-chunk",
        }
    }
}

/// Why bytes are not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    Empty,
    /// Longer than the configured maximum; not parsed.
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An envelope version this build does not speak.
    UnsupportedVersion(u8),
    /// The body is not a valid encoding of any message.
    Malformed,
    /// A valid message followed by this many extra bytes.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty message"),
            DecodeError::TooLarge { len, max } => write!(f, "message of {len} bytes exceeds {max}"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            DecodeError::Malformed => f.write_str("malformed message"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> ChainId {
        ChainId::from_name("test")
    }

    fn sample_messages() -> Vec<Message> {
        let client = Keypair::from_seed(&[7; 32]);
        let validator = Keypair::from_seed(&[1; 32]);
        let request = Request::new(&chain(), &client, 3, b"put k v".to_vec());
        let batch = Batch {
            requests: alloc::vec![request.clone()],
        };
        let digest = batch.digest(&chain());
        let vote = |phase| Vote::new(&chain(), 0, phase, (2, 9), digest, ReplicaId(1), &validator);
        alloc::vec![
            Message::Request(request),
            Message::PrePrepare(PrePrepare {
                vote: vote(Phase::PrePrepare),
                batch,
            }),
            Message::Vote(vote(Phase::Prepare)),
            Message::Vote(vote(Phase::Commit)),
        ]
    }

    #[test]
    fn every_message_round_trips_through_the_envelope() {
        for message in sample_messages() {
            let bytes = message.encode();
            assert_eq!(bytes[0], PROTOCOL_VERSION);
            assert_eq!(Message::decode(&bytes, 1 << 20), Ok(message));
        }
    }

    #[test]
    fn envelope_errors_are_typed() {
        let bytes = sample_messages().remove(0).encode();
        assert_eq!(Message::decode(&[], 100), Err(DecodeError::Empty));
        assert_eq!(
            Message::decode(&bytes, 10),
            Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: 10
            })
        );
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert_eq!(
            Message::decode(&wrong_version, 1 << 20),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Message::decode(&trailing, 1 << 20),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            Message::decode(&bytes[..bytes.len() - 1], 1 << 20),
            Err(DecodeError::Malformed)
        );
        assert_eq!(
            Message::decode(&[PROTOCOL_VERSION, 200], 1 << 20),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn signed_digests_are_separated_by_phase_chain_and_epoch() {
        let d = Digest([9; 32]);
        let base = vote_digest(&chain(), 0, Phase::Prepare, 1, 2, &d);
        assert_ne!(base, vote_digest(&chain(), 0, Phase::Commit, 1, 2, &d));
        assert_ne!(base, vote_digest(&chain(), 0, Phase::PrePrepare, 1, 2, &d));
        assert_ne!(
            base,
            vote_digest(&ChainId::from_name("other"), 0, Phase::Prepare, 1, 2, &d)
        );
        assert_ne!(base, vote_digest(&chain(), 1, Phase::Prepare, 1, 2, &d));
        assert_ne!(base, vote_digest(&chain(), 0, Phase::Prepare, 2, 1, &d));
    }
}
