//! The signed statements of the protocol: client requests, batches, votes, replies and
//! equivocation evidence, and the digests their signatures cover.
//!
//! Signatures never cover encoded bytes: each covers a sha3-256 digest of a domain tag (the
//! statement's kind), the chain id, the epoch and the fields, built field by field, so
//! encodings may change between versions without changing what a signature means, and a
//! signature of one kind can never be replayed as another.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::config::{ChainId, ReplicaId};
use crate::crypto::{Digest, Hasher, Keypair, PublicKey, Signature};
use crate::merkle::{self, InclusionProof};

/// A client's operation, signed by the client (end to end) or attested by a gateway.
///
/// `client_seq` orders one client's requests: each executes once, only if its number is
/// above every number of that client executed before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client's key: the request is this client's, whoever signed it.
    pub client: PublicKey,
    /// Strictly increasing per client.
    pub client_seq: u64,
    /// The operation for the application, opaque to consensus.
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// End to end (`attestation` is `None`): the client's signature over
    /// [`Request::digest`]. Gateway-attested: the gateway's signature over
    /// [`attestation_digest`] of the root its attestation's path leads to.
    pub signature: Signature,
    /// The gateway that attested this request in a batch of its clients' requests, with
    /// the request's path to that batch's signed root; `None` for a request its client
    /// signed. Validators take only attestations by the gateways of the request's epoch
    /// ([`crate::Replica::attesting_gateways`]).
    pub attestation: Option<Attestation>,
}

/// A gateway's word that its client, authenticated by the transport, sent this request:
/// the gateway signed the Merkle root over the digests ([`Request::digest`]) of the
/// requests it forwarded together, and this is one request's place in that tree. One
/// signature check covers the whole group; the signature is evidence of what the gateway
/// attested, so a gateway that makes up a client's request is caught by its own signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The gateway's key.
    pub gateway: PublicKey,
    /// The path from [`Request::digest`] to the signed root.
    pub proof: InclusionProof,
}

/// What a gateway signs for a group of requests it attests: their Merkle root, under the
/// chain and its own key. Requests carry no epoch, and neither does their attestation.
pub fn attestation_digest(chain: &ChainId, gateway: &PublicKey, root: &Digest) -> Digest {
    Hasher::new(b"pbft/v1/gateway-attestation")
        .digest(&chain.0)
        .bytes(&gateway.0)
        .digest(root)
        .finish()
}

/// Builds the requests a gateway attests together: one Merkle tree over their digests, its
/// root signed once by `gateway`, each request given its path. `requests` are
/// `(client, client_seq, op)`; the output keeps their order.
pub fn attest(
    chain: &ChainId,
    gateway: &Keypair,
    requests: Vec<(PublicKey, u64, Vec<u8>)>,
) -> Vec<Request> {
    let leaves: Vec<Digest> = requests
        .iter()
        .map(|(client, client_seq, op)| request_digest(chain, client, *client_seq, op))
        .collect();
    let tree = merkle::Tree::new(&leaves);
    let key = gateway.public_key();
    let signature = gateway.sign(&attestation_digest(chain, &key, &tree.root()));
    requests
        .into_iter()
        .enumerate()
        .filter_map(|(index, (client, client_seq, op))| {
            Some(Request {
                client,
                client_seq,
                op,
                signature,
                attestation: Some(Attestation {
                    gateway: key,
                    proof: tree.prove(index)?,
                }),
            })
        })
        .collect()
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
            attestation: None,
        }
    }

    /// What the client signs, and the request's leaf in the batch's Merkle tree.
    ///
    /// Requests carry no epoch: a client's operation means the same in every epoch.
    pub fn digest(&self, chain: &ChainId) -> Digest {
        request_digest(chain, &self.client, self.client_seq, &self.op)
    }

    /// Who signed `signature`, and over what: the client over `leaf` (this request's
    /// [`Request::digest`]), or the attesting gateway over [`attestation_digest`] of the root
    /// the path leads to from `leaf`. `None` if the attestation's path is malformed.
    pub fn signed(&self, chain: &ChainId, leaf: &Digest) -> Option<(&PublicKey, Digest)> {
        match &self.attestation {
            None => Some((&self.client, *leaf)),
            Some(attestation) => {
                let root = merkle::root_from_proof(leaf, &attestation.proof)?;
                let digest = attestation_digest(chain, &attestation.gateway, &root);
                Some((&attestation.gateway, digest))
            }
        }
    }

    /// The key whose signature `signature` is: the attesting gateway's, or the client's.
    pub fn signer(&self) -> &PublicKey {
        self.attestation
            .as_ref()
            .map_or(&self.client, |attestation| &attestation.gateway)
    }

    /// Whether `other` carries the same authentication: signature and attestation.
    pub fn same_authentication(&self, other: &Request) -> bool {
        self.signature == other.signature && self.attestation == other.attestation
    }

    /// Bytes this request adds to a batch, for the batch size limit: the operation,
    /// [`crate::envelope::REQUEST_OVERHEAD`], and an attestation's key, numbers and path.
    pub fn encoded_len(&self) -> usize {
        let attestation = self.attestation.as_ref().map_or(0, |attestation| {
            crate::envelope::ATTESTATION_OVERHEAD + 32 * attestation.proof.path.len()
        });
        crate::envelope::REQUEST_OVERHEAD + self.op.len() + attestation
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

/// An ordered list of requests decided together at one sequence number, and the
/// equivocation evidence the primary put in to have it committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests, in execution order.
    pub requests: Vec<Request>,
    /// Evidence against validators, at most [`MAX_BATCH_EVIDENCE`]; each verified by every
    /// backup before it prepares, and delivered to the application with the batch.
    pub evidence: Vec<Evidence>,
}

/// The most evidence one batch carries, so a proposal's checks stay bounded: two signatures
/// each.
pub const MAX_BATCH_EVIDENCE: usize = 4;

impl Batch {
    /// A batch of requests and no evidence.
    pub fn of(requests: Vec<Request>) -> Self {
        Batch {
            requests,
            evidence: Vec::new(),
        }
    }

    /// Whether the batch holds neither requests nor evidence.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.evidence.is_empty()
    }

    /// The Merkle tree's leaves: the request digests in order, then the evidence digests
    /// ([`Evidence::digest`]). Requests come first, so request `i` is leaf `i`.
    pub fn leaves(&self, chain: &ChainId) -> Vec<Digest> {
        let requests = self.requests.iter().map(|r| r.digest(chain));
        let evidence = self.evidence.iter().map(|e| e.digest(chain));
        requests.chain(evidence).collect()
    }

    /// The batch digest: the Merkle root over [`Batch::leaves`].
    pub fn digest(&self, chain: &ChainId) -> Digest {
        merkle::root(&self.leaves(chain))
    }

    /// Proof that request `index` is in this batch, checked against a QC's digest with
    /// [`crate::verify_inclusion`].
    pub fn prove(&self, chain: &ChainId, index: usize) -> Option<InclusionProof> {
        if index >= self.requests.len() {
            return None;
        }
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
    /// The digest ([`Request::digest`]) of the request that executed under `client_seq`: a
    /// client accepts the reply only for the request it sent, so one executed in its place
    /// (a listed gateway may attest any client's requests) never passes for it.
    pub request: Digest,
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
        reply_leaf(
            chain,
            (&self.client, self.client_seq, &self.request),
            &self.result,
        )
    }
}

/// The leaf for one reply in a batch's reply tree: the request (its client, number and
/// digest) and the result.
pub fn reply_leaf(
    chain: &ChainId,
    (client, client_seq, request): (&PublicKey, u64, &Digest),
    result: &[u8],
) -> Digest {
    Hasher::new(b"pbft/v1/reply")
        .digest(&chain.0)
        .bytes(&client.0)
        .u64(client_seq)
        .digest(request)
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

/// Two conflicting signed votes by one validator: transferable proof that it is Byzantine.
///
/// The votes conflict when one validator signed two digests for the very same statement:
/// the same phase, view and seq (a checkpoint is one statement per seq, always made in view
/// 0), in the same chain and epoch (both signatures cover `epoch` and the chain id). Votes
/// of two views are no conflict: a new view may order another batch at a seq (Castro and
/// Liskov, section 4.4), and every honest validator then votes for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The epoch whose set the signer belongs to; both signatures cover it.
    pub epoch: u64,
    /// One vote.
    pub first: Vote,
    /// A vote of the same phase, view and seq by the same signer, with another digest.
    pub second: Vote,
}

impl Evidence {
    /// The validator both votes are by.
    pub fn offender(&self) -> ReplicaId {
        self.first.replica
    }

    /// The batch leaf that commits this evidence: both votes whole, signatures included, so
    /// a copy a replica took by digest (fetched, re-proposed) is exactly the verified one.
    pub fn digest(&self, chain: &ChainId) -> Digest {
        let mut hasher = Hasher::new(b"pbft/v1/evidence");
        hasher.digest(&chain.0).u64(self.epoch);
        for vote in [&self.first, &self.second] {
            hasher
                .digest(&vote.signed_digest(chain, self.epoch))
                .u64(u64::from(vote.replica.0))
                .bytes(&vote.signature.0);
        }
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> ChainId {
        ChainId::from_name("test")
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
