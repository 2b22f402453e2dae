//! The largest new view a primary may have to send: a quorum of view changes, each with a full
//! window of prepared certificates and votes, and a proposal for every seq of the window. It must fit
//! in a message (`max_message_bytes`) and a log record, or the replica must refuse the
//! configuration. A full batch with its certificate likewise.

use pbft_core::testing::{chain, validator_key, validator_set};
use pbft_core::{
    Batch, CommitPath, Committed, Config, ConfigError, Digest, Message, NewView, Phase, Prepared,
    PreparedClaim, PublicKey, QuorumCertificate, Record, Replica, ReplicaId, Request, Signature,
    StableCheckpoint, ValidatorSet, ViewChange, ViewChangeSummary, Vote,
};

/// A vote whose every field takes its longest encoding (10-byte varints).
fn vote(phase: Phase, view: u64, seq: u64, replica: u16) -> Vote {
    Vote {
        phase,
        view,
        seq,
        digest: Digest([0xff; 32]),
        replica: ReplicaId(replica),
        signature: Signature([0xff; 64]),
    }
}

/// The parts of the worst case for `n` validators and `window`: the highest validator ids,
/// views and seqs (the longest varints), a stable checkpoint signed by a quorum and a prepared
/// certificate for every seq of the window. Sizes only: nothing here is signed.
struct WorstCase {
    view: u64,
    low: u64,
    signers: Vec<u16>,
    checkpoint: StableCheckpoint,
    prepared: Vec<Prepared>,
}

impl WorstCase {
    fn new(n: usize, window: u64) -> Self {
        let quorum = ValidatorSet::quorum_of(n);
        let view = u64::MAX;
        let low = u64::MAX - window - 1;
        let signers: Vec<u16> = (n - quorum..n).map(|id| id as u16).collect();
        let checkpoint = StableCheckpoint {
            seq: low,
            digest: Digest([0xff; 32]),
            signatures: signers
                .iter()
                .map(|&id| (ReplicaId(id), Signature([0xff; 64])))
                .collect(),
        };
        let prepared = (low + 1..=low + window)
            .map(|seq| Prepared {
                proposal: vote(Phase::PrePrepare, view - 1, seq, signers[0]),
                prepares: signers[1..]
                    .iter()
                    .map(|&id| vote(Phase::Prepare, view - 1, seq, id))
                    .collect(),
            })
            .collect();
        WorstCase {
            view,
            low,
            signers,
            checkpoint,
            prepared,
        }
    }

    /// One validator's view change carrying the whole window.
    fn view_change(&self) -> ViewChange {
        ViewChange {
            view: self.view,
            replica: ReplicaId(self.signers[0]),
            checkpoint: self.checkpoint.clone(),
            prepared: self.prepared.clone(),
            voted: self.prepared.iter().map(Prepared::claim).collect(),
            signature: Signature([0xff; 64]),
        }
    }

    /// The new view of a quorum of such view changes.
    fn new_view(&self) -> NewView {
        let claims: Vec<PreparedClaim> = self.prepared.iter().map(Prepared::claim).collect();
        let view_changes = self
            .signers
            .iter()
            .map(|&id| ViewChangeSummary {
                view: self.view,
                replica: ReplicaId(id),
                checkpoint_seq: self.low,
                checkpoint_digest: Digest([0xff; 32]),
                prepared: claims.clone(),
                voted: claims.clone(),
                signature: Signature([0xff; 64]),
            })
            .collect();
        let proposals = self
            .prepared
            .iter()
            .map(|p| {
                vote(
                    Phase::PrePrepare,
                    self.view,
                    p.proposal.seq,
                    self.signers[0],
                )
            })
            .collect();
        NewView {
            view: self.view,
            view_changes,
            checkpoint: self.checkpoint.clone(),
            prepared: self.prepared.clone(),
            proposals,
            signature: Signature([0xff; 64]),
        }
    }
}

/// A batch as large as `config` lets a backup take (requests of at most `max_request_bytes`
/// filling `max_batch_bytes`), with the largest QC of `n`: the fast path's, all n signatures.
fn full_batch(config: &Config, n: usize) -> Committed {
    let mut requests = Vec::new();
    let mut left = config.max_batch_bytes;
    while left > pbft_core::REQUEST_OVERHEAD {
        let op = (left - pbft_core::REQUEST_OVERHEAD).min(config.max_request_bytes);
        let request = Request {
            client: PublicKey([0xff; 32]),
            client_seq: u64::MAX,
            op: vec![0xff; op],
            signature: Signature([0xff; 64]),
            attestation: None,
        };
        left -= request.encoded_len();
        requests.push(request);
    }
    // The most evidence a batch carries, every varint at its longest.
    let vote = |digest| Vote {
        phase: Phase::Checkpoint,
        view: u64::MAX,
        seq: u64::MAX,
        digest: Digest([digest; 32]),
        replica: ReplicaId(u16::MAX),
        signature: Signature([0xff; 64]),
    };
    let evidence = (0..pbft_core::MAX_BATCH_EVIDENCE)
        .map(|_| pbft_core::Evidence {
            epoch: u64::MAX,
            first: vote(0xfe),
            second: vote(0xff),
        })
        .collect();
    Committed {
        batch: Batch { requests, evidence },
        certificate: QuorumCertificate {
            chain_id: chain(),
            epoch: u64::MAX,
            view: u64::MAX,
            seq: u64::MAX,
            digest: Digest([0xff; 32]),
            path: CommitPath::Fast,
            signatures: (0..n)
                .map(|id| (ReplicaId(id as u16), Signature([0xff; 64])))
                .collect(),
        },
    }
}

#[test]
fn a_worst_case_new_view_fits_a_message_or_the_configuration_is_refused() {
    let config = Config::new(chain());
    let window = config.window;
    let max = config.max_validators();
    println!(
        "default config: window {window}, max_message_bytes {}: at most {max} validators",
        config.max_message_bytes
    );
    for n in [4, 7, 31, max] {
        Replica::new(config.clone(), validator_set(n), validator_key(0))
            .unwrap_or_else(|err| panic!("n = {n} is refused: {err}"));
        let worst = WorstCase::new(n, window);
        let new_view = worst.new_view();
        let message = Message::NewView(new_view.clone()).encode().len();
        let record = Record::NewView(new_view.clone()).encode().len();
        let view_change = Message::ViewChange(worst.view_change()).encode().len();
        let committed = Message::Committed(full_batch(&config, n)).encode().len();
        let bound = NewView::max_bytes(n, window);
        println!(
            "n = {n}: worst-case new view {message} bytes ({record} as a log record, bound \
             {bound}, {} signatures); a view change {view_change}; a full batch with its QC \
             {committed}",
            new_view.signatures()
        );
        assert!(
            message <= bound && record <= bound,
            "n = {n}: the bound ({bound}) is below the encoding ({message}, {record})"
        );
        assert!(
            view_change <= bound,
            "n = {n}: a view change ({view_change}) is larger than the new view bound"
        );
        assert!(
            committed <= config.largest_message_bytes(n),
            "n = {n}: a full batch with its QC ({committed}) is above the bound"
        );
        assert!(
            bound <= config.max_message_bytes,
            "n = {n}: a worst-case new view may take {bound} bytes, over max_message_bytes \
             ({}), yet the configuration is accepted",
            config.max_message_bytes
        );
    }
    // One more validator, and the configuration is refused with the limit named.
    let refused = Replica::new(config.clone(), validator_set(max + 1), validator_key(0));
    match refused {
        Err(err @ ConfigError::MessagesTooLarge { .. }) => {
            println!("n = {}: {err}", max + 1);
            assert!(err.to_string().contains("max_message_bytes"));
        }
        Err(other) => panic!("n = {}: refused for another reason: {other}", max + 1),
        Ok(_) => panic!("n = {} is accepted", max + 1),
    }
}

#[test]
fn a_larger_window_or_a_smaller_message_lowers_the_most_validators() {
    let config = Config::new(chain());
    let wider = Config {
        window: 4 * config.window,
        retained_batches: 4 * config.retained_batches,
        ..config.clone()
    };
    let smaller = Config {
        max_message_bytes: 2 << 20,
        ..config.clone()
    };
    let (default, wider, smaller) = (
        config.max_validators(),
        wider.max_validators(),
        smaller.max_validators(),
    );
    println!("most validators: default {default}, window x4 {wider}, 2 MiB messages {smaller}");
    assert!(wider < default && smaller < default);
    // Each summary carries a prepared claim and a vote per seq of the window (the fast path's
    // view change), so a window of 1024 holds 25 validators in 4 MiB messages.
    assert!(wider >= 25, "a 1024 window still holds 25 validators");
}
