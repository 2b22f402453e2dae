//! Evidence and certificates across views: two votes are evidence only when one validator
//! signed different digests for the very same statement (phase, view, seq; a checkpoint's seq),
//! and a certificate (prepared or QC) only ever holds votes of one view, seq and digest.
//!
//! The replica under test (validator 2) keeps votes of view 0 for seq 1 in its log and then
//! enters view 1 from a new view whose stable checkpoint is at seq 2: seq 1 is not proposed
//! again, so its slot keeps what it held in view 0 while votes of view 1 arrive for it.

use pbft_core::testing::{
    NOW, chain, client_key, drain, key_of, pre_prepare, small_config, validator_key, validator_set,
    vote, vote_for,
};
use pbft_core::{
    Batch, CertificateError, CommitPath, Digest, Error, Evidence, Message, Output, Phase,
    QuorumCertificate, Record, Replica, ReplicaId, Request, StableCheckpoint, ValidatorSet,
    ViewChange, Vote, verify_evidence, verify_qc,
};

/// The batch proposed at seq 1 in view 0.
fn batch_a() -> Batch {
    pbft_core::testing::batch(&[1])
}

/// Another batch, with requests of its own.
fn batch_b() -> Batch {
    Batch::of(vec![Request::new(
        &chain(),
        &client_key(7),
        9,
        b"other".to_vec(),
    )])
}

fn digest(batch: &Batch) -> Digest {
    batch.digest(&chain())
}

/// A stable checkpoint at seq 2 signed by validators 0, 1 and 3.
fn checkpoint_at_2() -> StableCheckpoint {
    let state = Digest([7; 32]);
    StableCheckpoint {
        seq: 2,
        digest: state,
        signatures: [0, 1, 3]
            .into_iter()
            .map(|signer| {
                let vote = vote_for(signer, Phase::Checkpoint, (0, 2), state);
                (vote.replica, vote.signature)
            })
            .collect(),
    }
}

/// The new view for view 1 (primary: validator 1) that starts from the checkpoint at seq 2.
fn new_view_from_checkpoint() -> Vec<u8> {
    let changes: Vec<ViewChange> = [0, 1, 3]
        .into_iter()
        .map(|signer| {
            ViewChange::new(
                &chain(),
                0,
                (1, ReplicaId(signer as u16)),
                checkpoint_at_2(),
                (vec![], vec![]),
                &validator_key(signer),
            )
        })
        .collect();
    Message::NewView(pbft_core::testing::new_view(1, 1, changes, vec![])).encode()
}

fn send(replica: &mut Replica, from: usize, bytes: &[u8]) -> Result<(), Error> {
    replica.handle_message(NOW, &key_of(from), bytes)
}

fn send_vote(replica: &mut Replica, vote: Vote) -> Result<(), Error> {
    let from = vote.replica.0 as usize;
    send(replica, from, &Message::Vote(vote).encode())
}

/// Validator 2 after `view_0` ran on it in view 0, in view 1 from the checkpoint at seq 2.
fn in_view_1_after(view_0: impl FnOnce(&mut Replica)) -> Replica {
    let mut replica = pbft_core::testing::replica(2, small_config());
    view_0(&mut replica);
    drain(&mut replica);
    send(&mut replica, 1, &new_view_from_checkpoint()).unwrap();
    assert_eq!((replica.view(), replica.in_view()), (1, true));
    drain(&mut replica);
    replica
}

/// Every evidence output verifies, and there is none.
fn assert_no_evidence(outputs: &[Output]) {
    for output in outputs {
        if let Output::Evidence(evidence) = output {
            panic!(
                "evidence reported ({:?} by {} at view {} vs {:?} by {} at view {}); it verifies: {:?}",
                evidence.first.phase,
                evidence.first.replica,
                evidence.first.view,
                evidence.second.phase,
                evidence.second.replica,
                evidence.second.view,
                verify_evidence(&chain(), &validator_set(4), evidence)
            );
        }
    }
}

#[test]
fn a_new_primarys_proposal_is_not_evidence_against_the_old_primary() {
    let mut replica = in_view_1_after(|replica| {
        send(replica, 0, &pre_prepare(0, (0, 1), &batch_a())).unwrap();
    });
    // Validator 1 proposes another batch at seq 1 in view 1: not a second statement of
    // validator 0's, and not one validator 1 made twice.
    let result = send(&mut replica, 1, &pre_prepare(1, (1, 1), &batch_b()));
    assert_ne!(result, Err(Error::Equivocation(ReplicaId(1))));
    assert_no_evidence(&drain(&mut replica));
}

#[test]
fn votes_of_one_validator_in_two_views_are_not_evidence() {
    for phase in [Phase::Prepare, Phase::Commit] {
        let mut replica = in_view_1_after(|replica| {
            send_vote(replica, vote(3, phase, (0, 1), &batch_a())).unwrap();
        });
        // Validator 3 votes for another digest at seq 1 in view 1: allowed, a new view.
        let result = send_vote(&mut replica, vote(3, phase, (1, 1), &batch_b()));
        assert_ne!(result, Err(Error::Equivocation(ReplicaId(3))), "{phase:?}");
        assert_no_evidence(&drain(&mut replica));
        // Two digests in the same view are evidence, and it verifies.
        let result = send_vote(&mut replica, vote(3, phase, (1, 1), &batch_a()));
        assert_eq!(result, Err(Error::Equivocation(ReplicaId(3))), "{phase:?}");
        let outputs = drain(&mut replica);
        // Kept in the log first, so a crash does not lose it.
        let [
            Output::Persist(pbft_core::Record::Evidence(_)),
            Output::Send { .. },
            Output::Evidence(evidence),
        ] = outputs.as_slice()
        else {
            panic!("{phase:?}: expected the evidence forwarded and reported, got {outputs:?}");
        };
        assert_eq!(
            verify_evidence(&chain(), &validator_set(4), evidence),
            Ok(())
        );
        assert_eq!((evidence.first.view, evidence.second.view), (1, 1));
    }
}

/// Validator 2's commit certificate for seq 1 would mix views: it prepared and committed
/// batch A in view 0 and holds validator 0's commit of view 0 (two of the three it needs);
/// then validator 3's commit for the same digest in view 1 comes in.
#[test]
fn commits_of_two_views_never_make_a_qc() {
    let a = batch_a();
    let mut replica = in_view_1_after(|replica| {
        send(replica, 0, &pre_prepare(0, (0, 1), &a)).unwrap();
        // Its own prepare and validator 1's: prepared, so it commits.
        send_vote(replica, vote(1, Phase::Prepare, (0, 1), &a)).unwrap();
        send_vote(replica, vote(0, Phase::Commit, (0, 1), &a)).unwrap();
    });
    let _ = send_vote(&mut replica, vote(3, Phase::Commit, (1, 1), &a));
    for output in drain(&mut replica) {
        let certificate = match output {
            Output::Deliver(delivery) => delivery.certificate,
            Output::Persist(Record::Committed(certificate, _)) => certificate,
            _ => continue,
        };
        panic!(
            "a QC for seq {} of view {} was assembled from commits of views 0 and 1: {:?}",
            certificate.seq,
            certificate.view,
            verify_qc(&chain(), &validator_set(4), &certificate)
        );
    }
    // The commits of view 1 make a QC of view 1 only with a quorum of their own.
    assert_eq!(replica.executed_seq(), 0);
}

/// Validator 2 holds validator 3's prepare of view 0 for batch A at seq 1 (it never saw the
/// proposal); in view 1 the primary proposes batch A there and validator 0 prepares it.
#[test]
fn prepares_of_two_views_never_make_a_prepared_certificate() {
    let a = batch_a();
    let mut replica = in_view_1_after(|replica| {
        send_vote(replica, vote(3, Phase::Prepare, (0, 1), &a)).unwrap();
    });
    send(&mut replica, 1, &pre_prepare(1, (1, 1), &a)).unwrap();
    let _ = send_vote(&mut replica, vote(0, Phase::Prepare, (1, 1), &a));
    for output in drain(&mut replica) {
        if let Output::Persist(Record::Prepared(prepared, _)) = output {
            let views: Vec<u64> = prepared.prepares.iter().map(|p| p.view).collect();
            panic!(
                "prepared certificate of view {} assembled from prepares of views {views:?}",
                prepared.proposal.view
            );
        }
    }
}

#[test]
fn a_qc_signed_over_two_views_does_not_verify() {
    let a = batch_a();
    let signatures = [(0, 0), (1, 1), (3, 0)]
        .into_iter()
        .map(|(signer, view)| {
            let commit = vote(signer, Phase::Commit, (view, 1), &a);
            (commit.replica, commit.signature)
        })
        .collect();
    let mixed = QuorumCertificate {
        chain_id: chain(),
        epoch: 0,
        view: 0,
        seq: 1,
        digest: digest(&a),
        path: CommitPath::ThreePhase,
        signatures,
    };
    assert_eq!(
        verify_qc(&chain(), &validator_set(4), &mixed),
        Err(CertificateError::BadSignature)
    );
    let in_view_1 = QuorumCertificate { view: 1, ..mixed };
    assert_eq!(
        verify_qc(&chain(), &validator_set(4), &in_view_1),
        Err(CertificateError::BadSignature)
    );
}

/// Evidence from two votes of validator 2.
fn evidence(first: Vote, second: Vote) -> Evidence {
    Evidence {
        epoch: 0,
        first,
        second,
    }
}

#[test]
fn verify_evidence_accepts_only_really_conflicting_statements() {
    let set = validator_set(4);
    let (a, b) = (digest(&batch_a()), digest(&batch_b()));
    let check =
        |first: Vote, second: Vote| verify_evidence(&chain(), &set, &evidence(first, second));
    // The real thing: one validator, one statement, two digests. Each phase.
    for phase in [Phase::PrePrepare, Phase::Prepare, Phase::Commit] {
        let one = vote_for(2, phase, (1, 5), a);
        assert_eq!(check(one.clone(), vote_for(2, phase, (1, 5), b)), Ok(()));
        // Not conflicting: another view, seq or phase, the same digest, another signer.
        let not = Err(CertificateError::NotConflicting);
        assert_eq!(check(one.clone(), vote_for(2, phase, (2, 5), b)), not);
        assert_eq!(check(one.clone(), vote_for(2, phase, (1, 6), b)), not);
        let other_phase = match phase {
            Phase::Commit => Phase::Prepare,
            _ => Phase::Commit,
        };
        assert_eq!(check(one.clone(), vote_for(2, other_phase, (1, 5), b)), not);
        assert_eq!(check(one.clone(), vote_for(2, phase, (1, 5), a)), not);
        assert_eq!(check(one.clone(), one.clone()), not);
        assert_eq!(check(one.clone(), vote_for(3, phase, (1, 5), b)), not);
    }
    // A checkpoint is one statement per seq, always made in view 0.
    let at_4 = vote_for(2, Phase::Checkpoint, (0, 4), a);
    assert_eq!(
        check(at_4.clone(), vote_for(2, Phase::Checkpoint, (0, 4), b)),
        Ok(())
    );
    assert_eq!(
        check(
            vote_for(2, Phase::Checkpoint, (3, 4), a),
            vote_for(2, Phase::Checkpoint, (3, 4), b)
        ),
        Err(CertificateError::NotConflicting),
        "checkpoint votes outside view 0 are no statement any replica takes"
    );
    assert_eq!(
        check(at_4.clone(), vote_for(2, Phase::Checkpoint, (0, 6), b)),
        Err(CertificateError::NotConflicting)
    );
    // Signed for another chain, or another epoch, they are not this chain's statements.
    let other_chain = Vote::new(
        &pbft_core::ChainId::from_name("other"),
        0,
        Phase::Checkpoint,
        (0, 4),
        b,
        ReplicaId(2),
        &validator_key(2),
    );
    assert_eq!(
        check(at_4.clone(), other_chain),
        Err(CertificateError::BadSignature)
    );
    let other_epoch = Vote::new(
        &chain(),
        1,
        Phase::Checkpoint,
        (0, 4),
        b,
        ReplicaId(2),
        &validator_key(2),
    );
    assert_eq!(
        check(at_4.clone(), other_epoch),
        Err(CertificateError::BadSignature)
    );
    let keys: Vec<_> = (0..4).map(pbft_core::testing::key_of).collect();
    let epoch_1 = ValidatorSet::new(1, &keys).unwrap();
    assert_eq!(
        verify_evidence(
            &chain(),
            &epoch_1,
            &evidence(at_4.clone(), vote_for(2, Phase::Checkpoint, (0, 4), b))
        ),
        Err(CertificateError::WrongEpoch {
            got: 0,
            expected: 1
        })
    );
}
