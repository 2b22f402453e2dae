//! What clients and nodes say to each other on a client connection, beside consensus
//! messages: a request, a status query and a proof query, and their answers.
//!
//! Every frame is one [`ClientFrame`] or [`ServerFrame`] in the core's versioned envelope
//! ([`pbft_core::envelope`]: a version byte, then postcard) inside the transport's
//! length-delimited framing.

use pbft_core::envelope::{self, DecodeError, REQUEST_OVERHEAD};
use pbft_core::{
    ChainId, Config, Digest, EpochChange, Hasher, InclusionProof, Keypair, PublicKey,
    QuorumCertificate, Request, Signature, ValidatorSet, verify_inclusion, verify_qc_across_epochs,
};
use serde::{Deserialize, Serialize};

/// Bytes a [`ClientFrame`] carrying a request adds to the request's own
/// [`REQUEST_OVERHEAD`] and operation, at most: two envelope version bytes, two enum tags,
/// and the message's length (a varint of at most 5 bytes), with room to spare.
pub const CLIENT_REQUEST_FRAME_OVERHEAD: usize = 32;

/// The largest [`ClientFrame`] a node accepts under `config`, in bytes: a request whose
/// operation is `max_request_bytes` long, wrapped. Every other client frame is smaller (a
/// relay claim or a query is under 200 bytes), so a client connection that announces more
/// has broken the protocol, and a node never buffers more for it.
pub fn max_client_frame(config: &Config) -> usize {
    config.max_request_bytes + REQUEST_OVERHEAD + CLIENT_REQUEST_FRAME_OVERHEAD
}

/// From a client to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// A consensus message (a signed request), encoded by the core.
    Message(Vec<u8>),
    /// Where the node is and a digest of its application state.
    Status,
    /// `client` names the sender of this connection as its relay: replies to `client`'s
    /// requests come back this way, also from validators the requests never reached
    /// directly. Signed by `client`, so no one else can divert its replies.
    Relay {
        /// The relayed client.
        client: PublicKey,
        /// Its signature over [`relay_digest`].
        signature: Signature,
    },
    /// The QC and inclusion proof of a committed request, while the node still holds it.
    Proof {
        /// The seq the request committed at (from the replies).
        seq: u64,
        /// The request's digest.
        request: Digest,
    },
    /// The epoch changes the node holds that start epochs after `after`, oldest first, at
    /// most [`MAX_EPOCHS_PER_ANSWER`] (ask again from the last one for more): what a
    /// validator added by a reconfiguration joins from, and what a client follows.
    Epochs {
        /// The last epoch the asker knows (0: only genesis).
        after: u64,
    },
}

/// Epoch changes in one [`ServerFrame::Epochs`], at most.
pub const MAX_EPOCHS_PER_ANSWER: usize = 16;

/// What a [`ClientFrame`] asks of the node, as far as what it costs goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// [`ClientFrame::Message`]: a request for consensus.
    Request,
    /// [`ClientFrame::Relay`].
    Relay,
    /// [`ClientFrame::Status`], [`ClientFrame::Proof`] or [`ClientFrame::Epochs`].
    Query,
}

impl ClientFrame {
    /// The kind of the frame `bytes` holds, read from its envelope's version and its tag
    /// alone (the transport paces frames by kind before the node decodes them); `None` if
    /// they are not a known version and tag.
    pub fn kind(bytes: &[u8]) -> Option<FrameKind> {
        let (&version, rest) = bytes.split_first()?;
        if version != envelope::PROTOCOL_VERSION {
            return None;
        }
        // postcard writes an enum's variant index as a varint first; the five fit one byte.
        match rest.first()? {
            0 => Some(FrameKind::Request),
            1 | 3 | 4 => Some(FrameKind::Query),
            2 => Some(FrameKind::Relay),
            _ => None,
        }
    }
}

/// From a node to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// A consensus message (a signed reply), encoded by the core.
    Message(Vec<u8>),
    /// The answer to [`ClientFrame::Status`].
    Status(NodeStatus),
    /// The answer to [`ClientFrame::Proof`]: `None` if the node no longer holds that batch.
    Proof(Option<Box<ProofBundle>>),
    /// A gateway will not carry request `client_seq` (0: no request in particular), and
    /// says why (a [`pbft_core::Shed`]'s words): an answer the client can show.
    Refused {
        /// The request refused.
        client_seq: u64,
        /// Why, for a person.
        reason: String,
    },
    /// The answer to [`ClientFrame::Epochs`]: the changes after epoch `after` (as asked),
    /// none if the node knows no later epoch.
    Epochs {
        /// The `after` of the question this answers.
        after: u64,
        /// The changes, oldest first.
        changes: Vec<EpochChange>,
    },
}

/// What a client signs to name `relay` as the connection its replies go through.
pub fn relay_digest(chain: &ChainId, relay: &PublicKey) -> Digest {
    Hasher::new(b"pbft/v1/relay")
        .digest(&chain.0)
        .bytes(&relay.0)
        .finish()
}

impl ClientFrame {
    /// `client` names `relay` as its relay.
    pub fn relay(chain: &ChainId, client: &Keypair, relay: &PublicKey) -> ClientFrame {
        ClientFrame::Relay {
            client: client.public_key(),
            signature: client.sign(&relay_digest(chain, relay)),
        }
    }
}

/// Where a node is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its validator id (a position in the set of its epoch).
    pub id: u32,
    /// The epoch it is in ([`pbft_core::EpochChange`]).
    pub epoch: u64,
    /// Validators in that epoch's set.
    pub validators: u32,
    /// Its view.
    pub view: u64,
    /// The last seq it executed.
    pub executed: u64,
    /// Its stable checkpoint.
    pub stable: u64,
    /// The seq `state` was taken at (at most a second old while the node is busy: the
    /// digest hashes the whole state, so it is not recomputed for every query).
    pub state_seq: u64,
    /// Digest of its application state after `state_seq`.
    pub state: Digest,
    /// The primary of its view (an id in its epoch's set).
    pub primary: u32,
    /// Whether it runs its view (false while it waits for the view's new-view message).
    pub in_view: bool,
    /// Whether it was removed from the set by a reconfiguration, and takes no more part.
    pub retired: bool,
    /// Whether its rollback protection still asks its peers what it signed before its start
    /// (or the epoch's), and signs nothing until every peer answered, or f + 1 did and a view
    /// timeout passed ([`pbft_core::Replica::is_recovering`]). A node that stays so cannot
    /// reach f + 1 peers.
    pub recovering: bool,
    /// Validators it has a connection to.
    pub peers_connected: u32,
    /// Whether anything waits on it: a request, a slot not yet executed, a view change, a
    /// checkpoint not yet stable ([`pbft_core::Replica::is_idle`] is false).
    pub waiting: bool,
    /// Milliseconds since it last executed a batch (or since it started, if it has not).
    pub since_commit_ms: u64,
}

/// Offline proof that a request committed: a QC over its batch, the request's Merkle path to
/// the batch digest, and the epoch changes since genesis up to the QC's epoch, so a verifier
/// that holds only the genesis set checks a QC of any epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofBundle {
    /// The quorum certificate of the batch.
    pub certificate: QuorumCertificate,
    /// The request.
    pub request: Request,
    /// Its path to `certificate.digest`.
    pub proof: InclusionProof,
    /// The changes from genesis to the QC's epoch, and the one that ended it if it ended,
    /// oldest first (none for a QC of epoch 0 that is still running).
    pub epochs: Vec<EpochChange>,
}

impl ProofBundle {
    /// Checks the QC with the genesis set through the bundle's epoch changes
    /// ([`verify_qc_across_epochs`]) and the request's path to it; returns the set of the
    /// QC's epoch.
    ///
    /// # Errors
    ///
    /// [`verify_qc_across_epochs`]'s and [`verify_inclusion`]'s.
    pub fn verify(
        &self,
        chain: &ChainId,
        genesis: &ValidatorSet,
    ) -> Result<ValidatorSet, pbft_core::CertificateError> {
        let set = verify_qc_across_epochs(chain, genesis, &self.epochs, &self.certificate)?;
        verify_inclusion(&self.certificate, &self.request, &self.proof)?;
        Ok(set)
    }
}

/// A frame that does not decode, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame does not decode: {0}")]
pub struct BadFrame(pub DecodeError);

macro_rules! codec {
    ($type:ty) => {
        impl $type {
            /// The frame's bytes, in the core's versioned envelope.
            pub fn encode(&self) -> Vec<u8> {
                envelope::encode(self)
            }

            /// Reads a frame (the transport's framing bounds its length); another version
            /// or trailing bytes are refused.
            pub fn decode(bytes: &[u8]) -> Result<Self, BadFrame> {
                envelope::decode(bytes, usize::MAX).map_err(BadFrame)
            }
        }
    };
}

codec!(ClientFrame);
codec!(ServerFrame);
codec!(ProofBundle);

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::Message;

    #[test]
    fn the_largest_request_fits_the_largest_client_frame_exactly_enough() {
        let config = Config::new(ChainId::from_name("wire-tests"));
        let client = Keypair::from_seed(&[1; 32]);
        let op = vec![0xff; config.max_request_bytes];
        let request = Request::new(&config.chain_id, &client, u64::MAX, op);
        let frame = ClientFrame::Message(pbft_core::Message::Request(request).encode()).encode();
        assert!(frame.len() <= max_client_frame(&config), "{}", frame.len());
        assert!(
            frame.len() + 64 > max_client_frame(&config),
            "a tight bound"
        );
        let claim = ClientFrame::relay(&config.chain_id, &client, &client.public_key());
        assert!(claim.encode().len() < 200);
        // The kind read from two bytes is the decoded frame's.
        assert_eq!(ClientFrame::kind(&frame), Some(FrameKind::Request));
        assert_eq!(ClientFrame::kind(&claim.encode()), Some(FrameKind::Relay));
        assert_eq!(
            ClientFrame::kind(&ClientFrame::Status.encode()),
            Some(FrameKind::Query)
        );
        let proof = ClientFrame::Proof {
            seq: 1,
            request: pbft_core::Digest([0; 32]),
        };
        assert_eq!(ClientFrame::kind(&proof.encode()), Some(FrameKind::Query));
        assert_eq!(ClientFrame::kind(&[9, 0]), None, "another version");
        let _ = Message::decode;
    }
}
