//! The view change, checked by hand-built messages: every replica verifies a new view itself
//! and refuses one that drops a prepared batch, lacks a quorum or carries a forgery; one view
//! change cannot move a replica, f + 1 can; timeouts double per failed view.

use pbft_core::testing::{
    NOW, chain, client_key, committed, key_of, pre_prepare, request, small_config, validator_key,
    validator_set, view_change, vote, vote_for,
};
use pbft_core::{
    Batch, Config, Destination, Error, ExecutedState, Keypair, Message, NewView, Output, Phase,
    PrePrepare, Prepared, Record, Replica, ReplicaId, Request, StableCheckpoint, ViewChange,
    ViewChangeError, Vote, null_digest, verify_new_view,
};

fn config() -> Config {
    small_config()
}

fn replica(index: usize) -> Replica {
    pbft_core::testing::replica(index, config())
}

/// Replica `index` rebuilt from `records` and its store's `executed` state.
fn restore_replica(
    index: usize,
    records: impl IntoIterator<Item = Record>,
    executed: ExecutedState,
) -> Replica {
    Replica::restore(
        config(),
        validator_set(4),
        validator_key(index),
        records,
        executed,
    )
    .unwrap()
}

/// The batch that prepared at seq 1 in view 0.
fn prepared_batch() -> Batch {
    pbft_core::testing::batch(&[1])
}

/// A batch of one request signed with validator `signer`'s key, as a client would sign it.
fn batch_signed_by(signer: usize, client_seq: u64, op: &[u8]) -> Batch {
    Batch::of(vec![Request::new(
        &chain(),
        &validator_key(signer),
        client_seq,
        op.to_vec(),
    )])
}

/// A batch no one prepared.
fn other_batch() -> Batch {
    batch_signed_by(3, 9, b"other")
}

/// A batch for seq 2.
fn second_batch() -> Batch {
    batch_signed_by(1, 4, b"second")
}

/// Replica 0's pre-prepare at (0, 1) and prepares of replicas 1 and 2: prepared.
fn prepared() -> Prepared {
    let batch = prepared_batch();
    Prepared {
        proposal: vote(0, Phase::PrePrepare, (0, 1), &batch),
        prepares: vec![
            vote(1, Phase::Prepare, (0, 1), &batch),
            vote(2, Phase::Prepare, (0, 1), &batch),
        ],
    }
}

/// A new view for view 1, signed by its primary (replica 1).
fn new_view(view_changes: Vec<ViewChange>, proposals: Vec<Vote>) -> NewView {
    pbft_core::testing::new_view(1, 1, view_changes, proposals)
}

/// Replica 1 prepared the batch; 2 and 3 report nothing above the genesis.
fn quorum() -> Vec<ViewChange> {
    vec![
        view_change(1, 1, vec![prepared()]),
        view_change(2, 1, vec![]),
        view_change(3, 1, vec![]),
    ]
}

fn reproposal() -> Vote {
    vote(1, Phase::PrePrepare, (1, 1), &prepared_batch())
}

/// Feeds `new_view` to every validator other than its primary; each must refuse it with
/// `expected` and stay in view 0.
fn refused_by_every_replica(new_view: &NewView, expected: ViewChangeError) {
    let bytes = Message::NewView(new_view.clone()).encode();
    for index in [0, 2, 3] {
        let mut replica = replica(index);
        assert_eq!(
            replica.handle_message(NOW, &key_of(1), &bytes),
            Err(Error::ViewChange(expected)),
            "replica {index}"
        );
        assert_eq!((replica.view(), replica.in_view()), (0, true));
        assert!(
            replica.poll_output().is_none(),
            "a refused new view has no effect"
        );
    }
}

#[test]
fn a_valid_new_view_is_accepted_and_its_proposals_prepared_once_the_batch_is_held() {
    let valid = new_view(quorum(), vec![reproposal()]);
    let plan = verify_new_view(&chain(), &validator_set(4), 4, &valid).unwrap();
    assert_eq!(plan.proposals, vec![(1, prepared_batch().digest(&chain()))]);
    let bytes = Message::NewView(valid).encode();
    let with_batch = Message::PrePrepare(PrePrepare {
        vote: reproposal(),
        batch: prepared_batch(),
    })
    .encode();
    for index in [0, 2, 3] {
        let mut replica = replica(index);
        replica.handle_message(NOW, &key_of(1), &bytes).unwrap();
        assert_eq!((replica.view(), replica.in_view()), (1, true));
        let outputs: Vec<Output> = std::iter::from_fn(|| replica.poll_output()).collect();
        assert!(
            matches!(&outputs[..], [Output::Persist(Record::NewView(n))] if n.view == 1),
            "replica {index} persists the view it enters, and without the batch votes for \
             nothing: {outputs:?}"
        );
        // The batch comes (from any peer that holds it): logged, then prepared.
        replica
            .handle_message(NOW, &key_of(2), &with_batch)
            .unwrap();
        let outputs: Vec<Output> = std::iter::from_fn(|| replica.poll_output()).collect();
        assert!(
            matches!(&outputs[0], Output::Persist(Record::Accepted(p, b))
                if (p.view, p.seq) == (1, 1) && *b == prepared_batch()),
            "replica {index} logs the batch before it votes: {outputs:?}"
        );
        assert!(
            matches!(&outputs[1], Output::Persist(Record::Signed(v))
                if v.phase == Phase::Prepare && (v.view, v.seq) == (1, 1)),
            "replica {index} prepares the re-proposal: {outputs:?}"
        );
    }
}

#[test]
fn a_new_view_that_omits_a_prepared_batch_is_refused() {
    // No proposal at all for seq 1...
    refused_by_every_replica(
        &new_view(quorum(), vec![]),
        ViewChangeError::WrongProposal(1),
    );
    // ...or the null batch in its place...
    let null = vote_for(1, Phase::PrePrepare, (1, 1), null_digest(&chain()));
    refused_by_every_replica(
        &new_view(quorum(), vec![null]),
        ViewChangeError::WrongProposal(1),
    );
    // ...or another batch.
    let replaced = vote(1, Phase::PrePrepare, (1, 1), &other_batch());
    refused_by_every_replica(
        &new_view(quorum(), vec![replaced]),
        ViewChangeError::WrongProposal(1),
    );
}

#[test]
fn a_new_view_with_fewer_than_a_quorum_of_view_changes_is_refused() {
    let mut two = quorum();
    two.pop();
    refused_by_every_replica(
        &new_view(two, vec![reproposal()]),
        ViewChangeError::TooFewViewChanges { got: 2, needed: 3 },
    );
    // The same view change twice does not make a quorum either.
    let mut repeated = quorum();
    repeated[2] = repeated[1].clone();
    refused_by_every_replica(
        &new_view(repeated, vec![reproposal()]),
        ViewChangeError::DuplicateViewChange(ReplicaId(2)),
    );
}

#[test]
fn a_new_view_carrying_a_forged_view_change_is_refused() {
    // Replica 3's view change signed with another key.
    let mut forged = quorum();
    forged[2] = ViewChange::new(
        &chain(),
        0,
        (1, ReplicaId(3)),
        StableCheckpoint::genesis(),
        (vec![], vec![]),
        &Keypair::from_seed(&[0xee; 32]),
    );
    refused_by_every_replica(
        &new_view(forged, vec![reproposal()]),
        ViewChangeError::BadSignature,
    );
    // A prepared certificate with a forged prepare.
    let mut bad_cert = prepared();
    bad_cert.prepares[1].signature = bad_cert.prepares[0].signature;
    let mut forged = quorum();
    forged[0] = view_change(1, 1, vec![bad_cert]);
    refused_by_every_replica(
        &new_view(forged, vec![reproposal()]),
        ViewChangeError::BadSignature,
    );
    // A view change for another view.
    let mut stale = quorum();
    stale[1] = view_change(2, 2, vec![]);
    refused_by_every_replica(
        &new_view(stale, vec![reproposal()]),
        ViewChangeError::WrongView,
    );
    // A new view signed by a validator that does not lead view 1.
    let mut impostor = new_view(quorum(), vec![reproposal()]);
    impostor.signature = validator_key(2).sign(&impostor.signed_digest(&chain(), 0));
    refused_by_every_replica(&impostor, ViewChangeError::BadSignature);
}

#[test]
fn one_view_change_cannot_move_a_replica_but_f_plus_one_can() {
    let mut replica = replica(0);
    let change = |signer: usize| Message::ViewChange(view_change(signer, 5, vec![])).encode();
    replica.handle_message(NOW, &key_of(3), &change(3)).unwrap();
    assert_eq!((replica.view(), replica.in_view()), (0, true));
    replica.handle_message(NOW, &key_of(2), &change(2)).unwrap();
    assert_eq!((replica.view(), replica.in_view()), (5, false));
    let outputs: Vec<Output> = std::iter::from_fn(|| replica.poll_output()).collect();
    assert!(matches!(&outputs[0], Output::Persist(Record::ViewChange(c)) if c.view == 5));
    assert!(matches!(
        &outputs[1],
        Output::Send {
            to: Destination::AllValidators,
            ..
        }
    ));
}

/// A backup holding a client's request that the primary never orders.
fn waiting_backup() -> Replica {
    let mut backup = replica(2);
    let bytes = Message::Request(request(1)).encode();
    backup
        .handle_message(NOW, &client_key(0).public_key(), &bytes)
        .unwrap();
    backup
}

#[test]
fn a_request_the_primary_ignores_starts_a_view_change_after_the_timeout() {
    let mut backup = waiting_backup();
    let timeout = config().view_timeout_ms;
    assert_eq!(backup.poll_timeout(), Some(NOW + config().retransmit_ms));
    backup.handle_timeout(NOW + timeout - 1);
    assert!(backup.in_view());
    backup.handle_timeout(NOW + timeout);
    assert_eq!((backup.view(), backup.in_view()), (1, false));
    assert_eq!(backup.metrics().timeouts_fired, 1);
}

#[test]
fn each_failed_view_doubles_the_timeout_up_to_the_cap() {
    // Seven validators, so the waiting replica (6) leads none of views 1 to 5.
    let mut backup = Replica::new(config(), validator_set(7), validator_key(6)).unwrap();
    let bytes = Message::Request(request(1)).encode();
    backup
        .handle_message(NOW, &client_key(0).public_key(), &bytes)
        .unwrap();
    let base = config().view_timeout_ms;
    let mut now = NOW + base;
    backup.handle_timeout(now);
    let mut waits = Vec::new();
    for view in 1..=5u64 {
        // A quorum asks for this view, so the new-view timer runs; its primary stays silent.
        for signer in [0usize, 1, 2, 3] {
            let bytes = Message::ViewChange(view_change(signer, view, vec![])).encode();
            let _ = backup.handle_message(now, &key_of(signer), &bytes);
        }
        assert_eq!((backup.view(), backup.in_view()), (view, false));
        // The status timer fires in between; only the new-view deadline moves the view.
        let start = now;
        while backup.view() == view {
            now = backup.poll_timeout().unwrap();
            backup.handle_timeout(now);
        }
        waits.push(now - start);
    }
    assert_eq!(waits, vec![base, 2 * base, 4 * base, 8 * base, 8 * base]);
    assert_eq!(backup.metrics().timeouts_fired, 6);
}

#[test]
fn a_view_whose_new_view_delivered_nothing_before_the_timeout_counts_as_failed() {
    // The new view of view 1 comes, but the view delivers nothing before its timeout (here
    // the primary ignores a request): the view failed as surely as one whose new view never
    // came, and the next waits twice as long (Castro and Liskov 2002, section 4.5.2).
    let base = config().view_timeout_ms;
    let mut backup = replica(2);
    let empty = vec![
        view_change(0, 1, vec![]),
        view_change(2, 1, vec![]),
        view_change(3, 1, vec![]),
    ];
    let bytes = Message::NewView(new_view(empty, vec![])).encode();
    backup.handle_message(NOW, &key_of(1), &bytes).unwrap();
    assert_eq!((backup.view(), backup.in_view()), (1, true));
    let bytes = Message::Request(request(1)).encode();
    backup
        .handle_message(NOW, &client_key(0).public_key(), &bytes)
        .unwrap();
    let mut now = NOW;
    while backup.view() == 1 {
        now = backup.poll_timeout().unwrap();
        backup.handle_timeout(now);
    }
    assert_eq!((backup.view(), now - NOW), (2, base));
    for signer in [0usize, 1, 3] {
        let bytes = Message::ViewChange(view_change(signer, 2, vec![])).encode();
        let _ = backup.handle_message(now, &key_of(signer), &bytes);
    }
    let start = now;
    while backup.view() == 2 {
        now = backup.poll_timeout().unwrap();
        backup.handle_timeout(now);
    }
    assert_eq!(now - start, 2 * base, "view 1 counted as failed");
}

#[test]
fn a_restored_replica_repeats_its_votes_but_never_signs_a_conflicting_one() {
    let batch = prepared_batch();
    let mut backup = replica(2);
    backup
        .handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &batch))
        .unwrap();
    let records: Vec<Record> = std::iter::from_fn(|| backup.poll_output())
        .filter_map(|o| match o {
            Output::Persist(record) => Some(record),
            _ => None,
        })
        .collect();
    // The accepted pre-prepare with its batch, then the prepare.
    assert!(
        matches!(&records[..], [Record::Accepted(p, b), Record::Signed(v)]
        if p.phase == Phase::PrePrepare && *b == batch && v.phase == Phase::Prepare)
    );
    // The records survive the crash as bytes in a log. With the accepted pre-prepare back, a
    // second proposal for the slot is the primary's equivocation, and nothing is signed.
    let bytes: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
    let restored_records = bytes.iter().map(|b| Record::decode(b).unwrap());
    let mut whole = restore_replica(2, restored_records, ExecutedState::default());
    assert_eq!(
        whole.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &other_batch())),
        Err(Error::Equivocation(ReplicaId(0)))
    );
    let outputs: Vec<Output> = std::iter::from_fn(|| whole.poll_output()).collect();
    assert!(
        matches!(&outputs[..], [Output::Persist(Record::Evidence(_)), Output::Send { bytes, .. }, Output::Evidence(_)]
            if matches!(Message::decode(bytes, usize::MAX), Ok(Message::Evidence(_)))),
        "evidence, logged, forwarded, and no second prepare: {outputs:?}"
    );
    // From the vote alone (the signed index), the second prepare is refused all the same.
    let votes_only = records
        .iter()
        .filter(|r| matches!(r, Record::Signed(_)))
        .cloned();
    let mut restored = restore_replica(2, votes_only, ExecutedState::default());
    // A primary (Byzantine, or one that lost its own log) proposes another batch at the slot.
    restored
        .handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &other_batch()))
        .unwrap();
    let outputs: Vec<Output> = std::iter::from_fn(|| restored.poll_output()).collect();
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::Persist(_) | Output::Send { .. })),
        "no second prepare for the slot: {outputs:?}"
    );
    assert_eq!(restored.metrics().refused_to_equivocate, 1);
    // The same proposal again gets the same vote, byte for byte.
    let votes_only = records
        .iter()
        .filter(|r| matches!(r, Record::Signed(_)))
        .cloned();
    let mut again = restore_replica(2, votes_only, ExecutedState::default());
    again
        .handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &batch))
        .unwrap();
    let repeated = std::iter::from_fn(|| again.poll_output()).find_map(|o| match o {
        Output::Persist(Record::Signed(v)) => Some(v),
        _ => None,
    });
    assert_eq!(Some(&records[1]), repeated.map(Record::Signed).as_ref());
}

#[test]
fn a_replica_restored_mid_view_change_stays_in_it() {
    // Replica 0 follows f + 1 others to view 5, which replica 1 leads.
    let mut replica = replica(0);
    for signer in [2usize, 3] {
        let bytes = Message::ViewChange(view_change(signer, 5, vec![])).encode();
        let _ = replica.handle_message(NOW, &key_of(signer), &bytes);
    }
    assert_eq!((replica.view(), replica.in_view()), (5, false));
    let durable = replica.durable_records();
    let restored = restore_replica(0, durable, ExecutedState::default());
    assert_eq!((restored.view(), restored.in_view()), (5, false));
}

/// The messages a replica would sign and send now, by phase, view and seq.
fn signed_now(replica: &mut Replica) -> Vec<(Phase, u64, u64)> {
    std::iter::from_fn(|| replica.poll_output())
        .filter_map(|output| match output {
            Output::Persist(Record::Signed(v)) => Some((v.phase, v.view, v.seq)),
            _ => None,
        })
        .collect()
}

/// A stable checkpoint at `seq` as a record (restore trusts its own log; peers verify).
fn stable_at(seq: u64) -> Record {
    Record::Stable(StableCheckpoint {
        seq,
        digest: pbft_core::Digest([7; 32]),
        signatures: vec![],
    })
}

#[test]
fn a_restored_replica_signs_nothing_at_or_below_its_stable_checkpoint() {
    // Its log was compacted at the stable checkpoint 2: no votes below it survive. The
    // primary of view 0 then proposes a batch at seq 1, which committed long ago.
    let mut restored = restore_replica(2, [stable_at(2)], ExecutedState::default());
    let _ = restored.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &other_batch()));
    assert_eq!(signed_now(&mut restored), vec![], "no prepare at seq 1");
    // With its application durable at seq 2, seq 1 is below the window altogether.
    let executed = ExecutedState {
        executed: 2,
        ..ExecutedState::default()
    };
    let mut restored = restore_replica(2, [stable_at(2)], executed);
    assert_eq!(restored.low_watermark(), 2);
    assert!(matches!(
        restored.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 2), &other_batch())),
        Err(Error::OutOfWindow { .. })
    ));
    assert_eq!(signed_now(&mut restored), vec![]);
}

#[test]
fn a_restored_replica_signs_only_the_committed_digest_at_a_seq_it_executed() {
    // It executed seq 1 (durable in its store with the QC); no checkpoint is stable yet, so
    // seq 1 is still inside the window and its votes there were not kept.
    let executed = ExecutedState {
        executed: 1,
        committed: vec![committed(1, &prepared_batch())],
        ..ExecutedState::default()
    };
    let mut restored = restore_replica(2, [], executed.clone());
    assert_eq!(restored.executed_seq(), 1);
    assert_eq!(
        restored.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &other_batch())),
        Err(Error::ConflictsWithCommit { seq: 1 })
    );
    assert_eq!(signed_now(&mut restored), vec![], "another digest at seq 1");
    // A new view that re-proposes the batch committed there is prepared as usual.
    let mut restored = restore_replica(2, [], executed);
    let entered = Message::NewView(new_view(quorum(), vec![reproposal()])).encode();
    restored.handle_message(NOW, &key_of(1), &entered).unwrap();
    assert_eq!(signed_now(&mut restored), vec![(Phase::Prepare, 1, 1)]);
}

#[test]
fn a_restored_backup_keeps_the_re_proposals_of_the_new_view_it_entered() {
    // Replica 2 entered view 1 (seq 1 re-proposes the prepared batch) and crashed before its
    // prepare was durable: the new view is all its log holds.
    let entered = new_view(quorum(), vec![reproposal()]);
    let mut restored = restore_replica(2, [Record::NewView(entered)], ExecutedState::default());
    assert_eq!((restored.view(), restored.in_view()), (1, true));
    // The primary of view 1 now proposes another batch at seq 1: equivocation, not a slot.
    let result = restored.handle_message(NOW, &key_of(1), &pre_prepare(1, (1, 1), &other_batch()));
    assert_eq!(result, Err(Error::Equivocation(ReplicaId(1))));
    assert_eq!(signed_now(&mut restored), vec![]);
}

#[test]
fn a_restored_backup_knows_a_null_re_proposal_as_the_empty_batch() {
    // Seq 2 prepared in view 0, seq 1 did not: view 1 re-proposes seq 1 as a null batch.
    let batch = prepared_batch();
    let prepared_at_2 = Prepared {
        proposal: vote(0, Phase::PrePrepare, (0, 2), &batch),
        prepares: vec![
            vote(1, Phase::Prepare, (0, 2), &batch),
            vote(2, Phase::Prepare, (0, 2), &batch),
        ],
    };
    let changes = vec![
        view_change(1, 1, vec![prepared_at_2]),
        view_change(2, 1, vec![]),
        view_change(3, 1, vec![]),
    ];
    let null = vote_for(1, Phase::PrePrepare, (1, 1), null_digest(&chain()));
    let entered = new_view(
        changes,
        vec![null.clone(), vote(1, Phase::PrePrepare, (1, 2), &batch)],
    );
    verify_new_view(&chain(), &validator_set(4), 4, &entered).unwrap();
    let mut restored = restore_replica(3, [Record::NewView(entered)], ExecutedState::default());
    // The primary re-sends the null proposal: known, not refused as an empty batch.
    let bytes = Message::PrePrepare(pbft_core::PrePrepare {
        vote: null,
        batch: Batch::default(),
    })
    .encode();
    assert_eq!(
        restored.handle_message(NOW, &key_of(1), &bytes),
        Err(Error::Duplicate)
    );
    // It holds the null batch and never prepared it (its records have no vote): its first
    // input prepares it. Its peers' prepares then prepare the slot: it commits the null batch.
    for signer in [0usize, 2] {
        let prepare = vote_for(signer, Phase::Prepare, (1, 1), null_digest(&chain()));
        restored
            .handle_message(NOW, &key_of(signer), &Message::Vote(prepare).encode())
            .unwrap();
    }
    assert_eq!(
        signed_now(&mut restored),
        vec![(Phase::Prepare, 1, 1), (Phase::Commit, 1, 1)]
    );
}

#[test]
fn a_replica_holding_a_qc_for_a_seq_never_takes_another_batch_there() {
    // Seq 2 committed (its QC came from a peer) while seq 1 is still missing here; then the
    // primary proposes another batch at seq 2.
    let mut backup = replica(2);
    let second = second_batch();
    let at_two = Message::Committed(committed(2, &second)).encode();
    backup.handle_message(NOW, &key_of(1), &at_two).unwrap();
    assert_eq!(
        backup.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 2), &other_batch())),
        Err(Error::ConflictsWithCommit { seq: 2 })
    );
    let at_one = Message::Committed(committed(1, &prepared_batch())).encode();
    backup.handle_message(NOW, &key_of(1), &at_one).unwrap();
    let mut delivered = Vec::new();
    while let Some(output) = backup.poll_output() {
        if let Output::Deliver(delivery) = output {
            assert_eq!(delivery.batch.digest(&chain()), delivery.certificate.digest);
            let results = vec![vec![]; delivery.execute.len()];
            delivered.push(delivery.seq);
            backup
                .executed(
                    NOW,
                    delivery.seq,
                    results,
                    delivery.checkpoint.then(Vec::new),
                )
                .unwrap();
        }
    }
    assert_eq!(delivered, vec![1, 2]);
}

#[test]
fn a_restored_replica_still_holds_the_checkpoint_state_it_signed() {
    // Replica 2 executes seqs 1 and 2 (a checkpoint) from QCs and signs its state there.
    let mut replica = replica(2);
    let second = second_batch();
    let batches = [committed(1, &prepared_batch()), committed(2, &second)];
    for batch in &batches {
        let bytes = Message::Committed(batch.clone()).encode();
        replica.handle_message(NOW, &key_of(1), &bytes).unwrap();
    }
    let mut records = Vec::new();
    while let Some(output) = replica.poll_output() {
        match output {
            Output::Deliver(delivery) => {
                let results = vec![b"ok".to_vec(); delivery.execute.len()];
                let snapshot = delivery.checkpoint.then(|| b"app state".to_vec());
                replica
                    .executed(NOW, delivery.seq, results, snapshot)
                    .unwrap();
            }
            Output::Persist(record) => records.push(record),
            _ => {}
        }
    }
    let state = replica
        .checkpoint_state(2)
        .expect("its own checkpoint state");
    let restore = |checkpoint: pbft_core::CheckpointState| {
        let executed = ExecutedState {
            executed: 2,
            committed: batches.to_vec(),
            checkpoints: vec![checkpoint],
            ..ExecutedState::default()
        };
        restore_replica(2, records.clone(), executed)
    };
    // Kept by the host, it comes back: peers behind can fetch it even if everyone restarted.
    assert_eq!(
        restore(state.clone()).checkpoint_state(2),
        Some(state.clone())
    );
    // A state that is not the one it signed is not served.
    let mut other = state;
    other.app = b"another state".to_vec();
    assert_eq!(restore(other).checkpoint_state(2), None);
}
