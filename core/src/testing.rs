//! Fixtures shared by the tests, the fuzz targets, the benchmarks and the simulator: one chain
//! id, one set of validator and client keys, a small config, and signed messages built from
//! them.
//!
//! Behind the `testing` feature and not part of the API. A fixture that cannot be built is a
//! broken test, so these functions panic instead of returning errors.
//!
//! The simulator's traces are digests of what its replicas sign, so the chain id and the key
//! derivations here are fixed: changing one changes every golden trace.
#![allow(clippy::expect_used)]

use alloc::{format, vec, vec::Vec};

use crate::{
    Batch, ChainId, CommitPath, Committed, Config, Digest, Hasher, Keypair, Message, NewView,
    Output, Phase, PrePrepare, Prepared, PreparedClaim, PublicKey, QuorumCertificate, Replica,
    ReplicaId, Reply, Request, StableCheckpoint, ValidatorSet, ViewChange, Vote, reply_leaf,
    reply_root_digest,
};

/// A fixed virtual time, ms, for tests that need a `now` but never move it.
pub const NOW: u64 = 1_000;

/// The chain id of every fixture (and of every simulation).
pub fn chain() -> ChainId {
    ChainId::from_name("pbft-sim")
}

/// Validator `index`'s key pair: the same in every run, and the same for a validator whatever
/// the size of its set.
pub fn validator_key(index: usize) -> Keypair {
    Keypair::from_seed(&Hasher::new(b"sim/validator").u64(index as u64).finish().0)
}

/// The key pairs of validators 0 to `n` - 1.
pub fn validator_keys(n: usize) -> Vec<Keypair> {
    (0..n).map(validator_key).collect()
}

/// Validator `index`'s public key.
pub fn key_of(index: usize) -> PublicKey {
    validator_key(index).public_key()
}

/// The set of validators 0 to `n` - 1, in epoch 0.
pub fn validator_set(n: usize) -> ValidatorSet {
    let keys: Vec<PublicKey> = (0..n).map(key_of).collect();
    ValidatorSet::new(0, &keys).expect("the fixture keys are valid and distinct")
}

/// Client `index`'s key pair (no validator's).
pub fn client_key(index: usize) -> Keypair {
    Keypair::from_seed(&Hasher::new(b"sim/client").u64(index as u64).finish().0)
}

/// A config on [`chain`] small enough that a few requests fill the window (4 seqs) and reach a
/// checkpoint (every 2 seqs). Tests change what they exercise on top of it.
pub fn small_config() -> Config {
    let mut config = Config::new(chain());
    config.window = 4;
    config.checkpoint_interval = 2;
    config
}

/// Validator `index` of the set of 4 ([`validator_set`]), started with `config`.
pub fn replica(index: usize, config: Config) -> Replica {
    Replica::new(config, validator_set(4), validator_key(index)).expect("a valid config")
}

/// Request number `client_seq` of client 0, whose operation is `op <client_seq>`.
pub fn request(client_seq: u64) -> Request {
    Request::new(
        &chain(),
        &client_key(0),
        client_seq,
        format!("op {client_seq}").into_bytes(),
    )
}

/// Client 0's requests with these numbers ([`request`]), as one batch.
pub fn batch(client_seqs: &[u64]) -> Batch {
    Batch::of(client_seqs.iter().map(|&seq| request(seq)).collect())
}

/// Request `i` of a load spread round-robin over `clients`: from client `i` mod their number,
/// each client's requests numbered 1, 2, ... in turn, with an operation of `op_bytes` bytes.
pub fn round_robin_request(clients: &[Keypair], i: u64, op_bytes: usize) -> Request {
    let count = clients.len() as u64;
    let client = clients
        .get((i % count) as usize)
        .expect("at least one client");
    Request::new(
        &chain(),
        client,
        i / count + 1,
        vec![(i % 251) as u8; op_bytes],
    )
}

/// Validator `signer`'s signed vote of `phase` for `digest` at (view, seq), in epoch 0.
pub fn vote_for(signer: usize, phase: Phase, (view, seq): (u64, u64), digest: Digest) -> Vote {
    Vote::new(
        &chain(),
        0,
        phase,
        (view, seq),
        digest,
        ReplicaId(signer as u16),
        &validator_key(signer),
    )
}

/// Validator `signer`'s signed vote of `phase` for `batch` at (view, seq), in epoch 0.
pub fn vote(signer: usize, phase: Phase, at: (u64, u64), batch: &Batch) -> Vote {
    vote_for(signer, phase, at, batch.digest(&chain()))
}

/// Validator `signer`'s proposal of `batch` at (view, seq), encoded for the wire.
pub fn pre_prepare(signer: usize, at: (u64, u64), batch: &Batch) -> Vec<u8> {
    Message::PrePrepare(PrePrepare {
        vote: vote(signer, Phase::PrePrepare, at, batch),
        batch: batch.clone(),
    })
    .encode()
}

/// Validator `signer`'s view change to `view` from the genesis checkpoint, carrying `prepared`
/// and reporting no votes.
pub fn view_change(signer: usize, view: u64, prepared: Vec<Prepared>) -> ViewChange {
    view_change_with_votes(signer, view, prepared, Vec::new())
}

/// [`view_change`] reporting `voted` as the signer's latest votes.
pub fn view_change_with_votes(
    signer: usize,
    view: u64,
    prepared: Vec<Prepared>,
    voted: Vec<PreparedClaim>,
) -> ViewChange {
    ViewChange::new(
        &chain(),
        0,
        (view, ReplicaId(signer as u16)),
        StableCheckpoint::genesis(),
        (prepared, voted),
        &validator_key(signer),
    )
}

/// A new view for `view` of the set of 4 made of `view_changes` ([`NewView::assemble`]) and
/// `proposals`, signed by validator `signer` (valid only from the view's primary).
pub fn new_view(
    signer: usize,
    view: u64,
    view_changes: Vec<ViewChange>,
    proposals: Vec<Vote>,
) -> NewView {
    let mut new_view = NewView::assemble(&validator_set(4), view, &view_changes, proposals);
    new_view.signature = validator_key(signer).sign(&new_view.signed_digest(&chain(), 0));
    new_view
}

/// `batch` committed at seq `seq` in view 0, with the commits of validators 0, 1 and 2 as its
/// QC (a quorum of the set of 4).
pub fn committed(seq: u64, batch: &Batch) -> Committed {
    let digest = batch.digest(&chain());
    let signatures = (0..3)
        .map(|signer| {
            let commit = vote_for(signer, Phase::Commit, (0, seq), digest);
            (commit.replica, commit.signature)
        })
        .collect();
    Committed {
        batch: batch.clone(),
        certificate: QuorumCertificate {
            chain_id: chain(),
            epoch: 0,
            view: 0,
            seq,
            digest,
            path: CommitPath::ThreePhase,
            signatures,
        },
    }
}

/// What a batch's requests got: (client, client seq, request digest, result) each, in batch
/// order.
pub type Answered<'a> = [(PublicKey, u64, Digest, &'a [u8])];

/// Validator `signer`'s reply in `view` at `seq` to request `index` of a batch whose requests
/// got `answered`: its Merkle path to the batch's reply root, and its signature over that root.
pub fn reply(signer: usize, (view, seq): (u64, u64), answered: &Answered, index: usize) -> Reply {
    let leaves: Vec<Digest> = answered
        .iter()
        .map(|(client, client_seq, request, result)| {
            reply_leaf(&chain(), (client, *client_seq, request), result)
        })
        .collect();
    let root = crate::merkle::root(&leaves);
    let (client, client_seq, request, result) = *answered.get(index).expect("index in the batch");
    let signed = reply_root_digest(&chain(), 0, view, seq, &root);
    Reply {
        view,
        seq,
        client,
        client_seq,
        request,
        result: result.to_vec(),
        proof: crate::merkle::prove(&leaves, index).expect("index in the batch"),
        replica: ReplicaId(signer as u16),
        signature: validator_key(signer).sign(&signed),
    }
}

/// Every output `replica` holds now, in order.
pub fn drain(replica: &mut Replica) -> Vec<Output> {
    core::iter::from_fn(|| replica.poll_output()).collect()
}
