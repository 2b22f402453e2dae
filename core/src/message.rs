//! The wire: every message validators exchange, in the versioned [`crate::envelope`]. The
//! signed statements a message carries live in [`crate::statement`], the certificates in
//! [`crate::certificate`] and [`crate::view_change`].

use alloc::boxed::Box;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::certificate::Committed;
use crate::crypto::Digest;
use crate::envelope::{self, DecodeError};
use crate::epoch::EpochChange;
use crate::new_view::NewView;
use crate::refusal::RequestRefusal;
use crate::state::{FetchState, Manifest, StateChunk};
use crate::statement::Evidence;
use crate::statement::{Batch, Phase, PrePrepare, Reply, Request, Vote};
use crate::view_change::{StableCheckpoint, ViewChange, ViewChangeSummary};

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
    /// The sender's epoch: views, seqs and checkpoints below are of it.
    pub epoch: u64,
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

/// A new primary's request for batches its new view re-proposes and it does not hold: it
/// signs no re-proposal without the batch ([`crate::view_change`], "Why every re-proposed
/// batch can be found"). Sent only to the validators whose view changes reported a wanted
/// batch; each answers with a [`Message::Batch`] for every one it holds, once per
/// `retransmit_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchBatches {
    /// The view the sender is the primary of and is about to start.
    pub view: u64,
    /// (seq, digest) of each batch wanted: at most a window of them.
    pub wanted: Vec<(u64, Digest)>,
}

/// A batch for a [`FetchBatches`], proved by its digest: the receiver takes it only if it
/// asked for that digest at `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAt {
    /// The sequence number it was proposed at.
    pub seq: u64,
    /// The batch.
    pub batch: Batch,
}

/// Asked by a validator that started from its data dir: what do you hold signed by my key?
/// Its data dir may be an old copy (a restored backup, a VM snapshot) that lacks statements it
/// signed since; it signs nothing until f + 1 peers answered ([`RecoveryAnswer`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryQuery {
    /// The asker's epoch: answers hold statements of it.
    pub epoch: u64,
}

/// What the sender holds signed by the asker of a [`RecoveryQuery`], in the asker's epoch:
/// the statements themselves, so the asker checks its own signatures and no peer can make
/// one up. At most a window's slots of votes (a proposal, a prepare and a commit each, and
/// the proposals the sender refused), the checkpoint votes above the sender's stable
/// checkpoint, the asker's latest view change, the view the sender is in and the new view
/// that started it if the asker led it, and the sender's stable checkpoint (certified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryAnswer {
    /// The epoch of the statements.
    pub epoch: u64,
    /// Votes signed by the asker.
    pub votes: Vec<Vote>,
    /// The asker's latest view change the sender holds (its summary: what was signed).
    pub view_change: Option<ViewChangeSummary>,
    /// The last view the sender entered (0 before any new view): once f + 1 senders report
    /// one, a quorum left the views below it, and the asker signs nothing in those.
    pub view: u64,
    /// The new view that started `view`, if the asker was its primary (it signed it; its
    /// proposals are not repeated in `votes`).
    pub led: Option<Box<NewView>>,
    /// The sender's stable checkpoint: every seq at or below it is final, and the sender no
    /// longer holds the votes there, so the asker signs nothing there either.
    pub stable: StableCheckpoint,
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
    /// A new primary asks for re-proposed batches it lacks.
    FetchBatches(FetchBatches),
    /// A batch a new primary asked for.
    Batch(BatchAt),
    /// Equivocation evidence, forwarded so that it reaches the primary and is committed.
    Evidence(Evidence),
    /// Proof that the receiver's epoch ended, for a validator still in it.
    EpochChange(EpochChange),
    /// To a client: a validator will not order its request, and says why.
    Refusal(RequestRefusal),
    /// A validator that started from its data dir asks what its peers hold signed by it.
    RecoveryQuery(RecoveryQuery),
    /// The answer to a [`RecoveryQuery`].
    RecoveryAnswer(RecoveryAnswer),
}
impl Message {
    /// Encodes into the versioned [`crate::envelope`].
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode_sized(self, self.size_hint())
    }

    /// About how many bytes [`Message::encode`] writes, at least for the messages sent once
    /// per request or batch, so their buffer is allocated once, not grown: a reply's result
    /// and proof, a pre-prepare's requests; 128 for the rest.
    fn size_hint(&self) -> usize {
        const FIXED: usize = 256;
        match self {
            Message::Reply(reply) => FIXED + reply.result.len() + 33 * reply.proof.path.len(),
            Message::PrePrepare(pre_prepare) => {
                let requests: usize = pre_prepare
                    .batch
                    .requests
                    .iter()
                    .map(Request::encoded_len)
                    .sum();
                FIXED + requests
            }
            Message::Request(request) => FIXED + request.op.len(),
            Message::Batch(BatchAt { batch, .. }) => {
                FIXED
                    + batch
                        .requests
                        .iter()
                        .map(Request::encoded_len)
                        .sum::<usize>()
            }
            _ => 128,
        }
    }

    /// Decodes one envelope of at most `max_len` bytes.
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: too long, empty, another version, malformed, or trailing bytes.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Message, DecodeError> {
        envelope::decode(bytes, max_len)
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
            Message::FetchBatches(_) => "fetch-batches",
            Message::Batch(_) => "batch",
            Message::Evidence(_) => "evidence",
            Message::EpochChange(_) => "epoch change",
            Message::Refusal(_) => "refusal",
            Message::RecoveryQuery(_) => "recovery-query",
            Message::RecoveryAnswer(_) => "recovery-answer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChainId, ReplicaId};
    use crate::crypto::Keypair;
    use crate::envelope::PROTOCOL_VERSION;

    fn chain() -> ChainId {
        ChainId::from_name("test")
    }

    fn sample_messages() -> Vec<Message> {
        let client = Keypair::from_seed(&[7; 32]);
        let validator = Keypair::from_seed(&[1; 32]);
        let request = Request::new(&chain(), &client, 3, b"put k v".to_vec());
        let batch = Batch::of(alloc::vec![request.clone()]);
        let digest = batch.digest(&chain());
        let vote = |phase| Vote::new(&chain(), 0, phase, (2, 9), digest, ReplicaId(1), &validator);
        alloc::vec![
            Message::Request(request.clone()),
            Message::PrePrepare(PrePrepare {
                vote: vote(Phase::PrePrepare),
                batch,
            }),
            Message::Vote(vote(Phase::Prepare)),
            Message::Vote(vote(Phase::Commit)),
            Message::FetchBatches(FetchBatches {
                view: 2,
                wanted: alloc::vec![(9, digest)],
            }),
            Message::Batch(BatchAt {
                seq: 9,
                batch: Batch::of(alloc::vec![request]),
            }),
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
        wrong_version[0] = PROTOCOL_VERSION - 1;
        assert_eq!(
            Message::decode(&wrong_version, 1 << 20),
            Err(DecodeError::UnsupportedVersion(PROTOCOL_VERSION - 1))
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
}
