//! Rollback protection at the level of one replica: what peers report signed by its key and
//! its log lacks closes the views it may have signed in, a restart keeps that fence, the
//! new view it would lead is withheld with the rest, and a peer whose answer fails is not
//! counted. The whole-cluster runs are the simulator's `Kind::Rollback` and the
//! multi-process `rollback` test.

use pbft_core::testing::{
    NOW, batch, drain, key_of, pre_prepare, replica, small_config, validator_key, validator_set,
    view_change, vote_for,
};
use pbft_core::{
    Destination, Digest, ExecutedState, Message, Output, Phase, Record, RecoveryAnswer, Replica,
};

/// Validator 1 of the set of 4, started, with rollback protection asking its peers.
fn checking() -> Replica {
    let mut replica = replica(1, small_config());
    replica.check_for_rollback(NOW);
    drain(&mut replica);
    replica
}

/// An answer holding `view_change` (validator 1's, if any) and `votes`, from a peer in
/// view 0.
fn answer(view_change: Option<u64>, votes: Vec<pbft_core::Vote>) -> Vec<u8> {
    answer_in(0, view_change, votes)
}

/// [`answer`] from a peer that entered `view`.
fn answer_in(view: u64, view_change: Option<u64>, votes: Vec<pbft_core::Vote>) -> Vec<u8> {
    Message::RecoveryAnswer(RecoveryAnswer {
        epoch: 0,
        votes,
        view_change: view_change.map(|view| view_change_of(1, view).summary()),
        view,
        led: None,
        stable: pbft_core::StableCheckpoint::genesis(),
    })
    .encode()
}

fn view_change_of(signer: usize, view: u64) -> pbft_core::ViewChange {
    view_change(signer, view, Vec::new())
}

/// Hands `replica` the view changes of `signers` for `view`; returns the outputs.
fn view_changes(replica: &mut Replica, view: u64, signers: &[usize]) -> Vec<Output> {
    for &signer in signers {
        let bytes = Message::ViewChange(view_change_of(signer, view)).encode();
        replica
            .handle_message(NOW, &key_of(signer), &bytes)
            .unwrap();
    }
    drain(replica)
}

/// The views of the view changes and new views `outputs` persist (signed by the replica).
fn signed_views(outputs: &[Output]) -> (Vec<u64>, Vec<u64>) {
    let mut changes = Vec::new();
    let mut new_views = Vec::new();
    for output in outputs {
        match output {
            Output::Persist(Record::ViewChange(change)) => changes.push(change.view),
            Output::Persist(Record::NewView(new_view)) => new_views.push(new_view.view),
            _ => {}
        }
    }
    (changes, new_views)
}

fn report(outputs: &[Output]) -> pbft_core::RecoveryReport {
    outputs
        .iter()
        .find_map(|output| match output {
            Output::Recovered(report) => Some(*report),
            _ => None,
        })
        .expect("the check settled")
}

#[test]
fn a_lost_view_change_closes_its_view_even_after_the_replica_moved_there_while_asking() {
    let mut restored = checking();
    // While it asks, f + 1 peers leave for view 2, and it follows them: the view it is in
    // is now the one of its lost view change.
    let outputs = view_changes(&mut restored, 2, &[2, 3]);
    assert_eq!(restored.view(), 2);
    assert_eq!(signed_views(&outputs).0, Vec::<u64>::new(), "sealed");
    // Before the copy it was restored from, it had signed a view change for view 2.
    let mut outputs = Vec::new();
    for (peer, view_change) in [(0, Some(2)), (2, None), (3, None)] {
        let bytes = answer(view_change, Vec::new());
        restored.handle_message(NOW, &key_of(peer), &bytes).unwrap();
        outputs.extend(drain(&mut restored));
    }
    let found = report(&outputs);
    assert_eq!((found.lost, found.closed_through_view), (1, Some(2)));
    assert!(
        outputs.iter().any(
            |o| matches!(o, Output::Persist(Record::Fenced(fence, _)) if fence.view == Some(2))
        ),
        "the fence is logged before anything is signed"
    );
    // Comparing with the view it had moved to, it would now sign a second view change for
    // view 2, which may contradict the lost one.
    assert_eq!(signed_views(&outputs).0, Vec::<u64>::new());
    // A later view is open to it.
    let outputs = view_changes(&mut restored, 3, &[2, 3]);
    assert_eq!(signed_views(&outputs).0, [3]);
}

#[test]
fn a_restart_keeps_the_fence_when_peers_no_longer_hold_the_lost_statement() {
    let mut restored = checking();
    let mut records = Vec::new();
    for (peer, view_change) in [(0, Some(2)), (2, None), (3, None)] {
        let bytes = answer(view_change, Vec::new());
        restored.handle_message(NOW, &key_of(peer), &bytes).unwrap();
        // A compaction while the check still waits keeps what the first answer showed.
        let fenced = |record: &Record| matches!(record, Record::Fenced(..));
        assert!(restored.durable_records().iter().any(fenced));
    }
    records.extend(drain(&mut restored).into_iter().filter_map(|o| match o {
        Output::Persist(record) => Some(record),
        _ => None,
    }));
    assert!(
        restored
            .durable_records()
            .iter()
            .any(|record| matches!(record, Record::Fenced(fence, _) if fence.view == Some(2))),
        "compaction keeps the fence"
    );
    // Restarted from its log; this time no peer holds the lost view change.
    let mut again = Replica::restore(
        small_config(),
        validator_set(4),
        validator_key(1),
        records,
        ExecutedState::default(),
    )
    .unwrap();
    again.check_for_rollback(NOW);
    for peer in [0, 2, 3] {
        let bytes = answer(None, Vec::new());
        again.handle_message(NOW, &key_of(peer), &bytes).unwrap();
    }
    assert_eq!(report(&drain(&mut again)).lost, 0);
    let outputs = view_changes(&mut again, 2, &[2, 3]);
    assert_eq!(
        signed_views(&outputs).0,
        Vec::<u64>::new(),
        "view 2 stays closed"
    );
    let outputs = view_changes(&mut again, 3, &[2, 3]);
    assert_eq!(signed_views(&outputs).0, [3]);
}

#[test]
fn the_new_view_it_would_lead_waits_for_the_answers_and_stays_unsigned_in_a_closed_view() {
    // Validator 1 leads view 1. While it asks, a quorum of peers asks for view 1.
    for lost in [false, true] {
        let mut restored = checking();
        let outputs = view_changes(&mut restored, 1, &[0, 2, 3]);
        assert_eq!(
            signed_views(&outputs),
            (vec![], vec![]),
            "sealed: no new view"
        );
        let mut outputs = Vec::new();
        for peer in [0, 2, 3] {
            let view_change = (lost && peer == 0).then_some(1);
            let bytes = answer(view_change, Vec::new());
            restored.handle_message(NOW, &key_of(peer), &bytes).unwrap();
            outputs.extend(drain(&mut restored));
        }
        let (changes, new_views) = signed_views(&outputs);
        match lost {
            // Nothing lost: once settled it signs its view change and starts the view.
            false => assert_eq!((changes, new_views), (vec![1], vec![1])),
            // It signed a view change for view 1 the copy lacks: it may have led view 1
            // with another new view already.
            true => assert_eq!((changes, new_views), (vec![], vec![])),
        }
    }
}

#[test]
fn lost_votes_bind_but_are_logged_apart_from_the_log_s_own() {
    let mut restored = checking();
    // Its prepare at seq 3 of view 0, which its log lacks.
    let lost = vote_for(1, Phase::Prepare, (0, 3), Digest([7; 32]));
    let mut outputs = Vec::new();
    for peer in [0, 2, 3] {
        let votes = match peer {
            0 => vec![lost.clone()],
            _ => Vec::new(),
        };
        let bytes = answer(None, votes);
        restored.handle_message(NOW, &key_of(peer), &bytes).unwrap();
        outputs.extend(drain(&mut restored));
    }
    let found = report(&outputs);
    assert_eq!(
        (
            found.lost,
            found.closed_through_view,
            found.view_changes_from_seq
        ),
        (1, Some(0), Some(3))
    );
    let records = restored.durable_records();
    assert!(
        records
            .iter()
            .any(|r| matches!(r, Record::Fenced(_, votes) if votes == std::slice::from_ref(&lost)))
    );
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, Record::Signed(vote) if vote == &lost)),
        "a restart must not take it back as a vote of its log (with its view and batch)"
    );
}

#[test]
fn a_peer_whose_answer_fails_is_not_counted_nor_asked_again() {
    let mut restored = checking();
    // Peer 0 passes off validator 2's prepare as validator 1's.
    let mut forged = vote_for(2, Phase::Prepare, (0, 3), Digest([7; 32]));
    forged.replica = pbft_core::ReplicaId(1);
    let bytes = answer(None, vec![forged]);
    assert!(restored.handle_message(NOW, &key_of(0), &bytes).is_err());
    for peer in [2, 3] {
        let bytes = answer(None, Vec::new());
        restored.handle_message(NOW, &key_of(peer), &bytes).unwrap();
    }
    drain(&mut restored);
    // Its good answer now does not complete the set: the check waits out its view timeout.
    let bytes = answer(None, Vec::new());
    restored.handle_message(NOW, &key_of(0), &bytes).unwrap();
    assert!(restored.is_recovering());
    // Asked again, peer 0 is left out.
    let again = NOW + small_config().retransmit_ms;
    restored.handle_timeout(again);
    let asked: Vec<_> = drain(&mut restored)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send {
                to: Destination::Validator(peer),
                ..
            } => Some(peer.0),
            _ => None,
        })
        .collect();
    assert!(!asked.contains(&0), "asked {asked:?}");
    let settled = NOW + small_config().view_timeout_ms;
    restored.handle_timeout(settled);
    assert!(
        !restored.is_recovering(),
        "f + 1 answers and a view timeout settle it"
    );
}

/// Peers drop a view's slots when they leave it, so a vote the replica signed there before
/// its copy was taken may survive nowhere: once f + 1 peers say they entered a later view,
/// it signs nothing in the views a quorum left. One peer alone cannot close a view to it.
#[test]
fn views_f_plus_1_peers_left_are_closed_and_one_peer_cannot_close_them() {
    for peers_in_view_2 in [1, 2] {
        let mut restored = checking();
        let mut outputs = Vec::new();
        for (n, peer) in [0, 2, 3].into_iter().enumerate() {
            let view = if n < peers_in_view_2 { 2 } else { 0 };
            let bytes = answer_in(view, None, Vec::new());
            restored.handle_message(NOW, &key_of(peer), &bytes).unwrap();
            outputs.extend(drain(&mut restored));
        }
        let found = report(&outputs);
        assert_eq!(found.lost, 0);
        // The primary of view 0 proposes (it may have proposed another batch there before).
        let bytes = pre_prepare(0, (0, 1), &batch(&[1]));
        let _ = restored.handle_message(NOW, &key_of(0), &bytes);
        let prepared = drain(&mut restored).iter().any(|output| {
            matches!(output, Output::Persist(Record::Signed(vote)) if vote.phase == Phase::Prepare)
        });
        match peers_in_view_2 {
            1 => assert!(prepared && found.closed_through_view.is_none()),
            _ => assert!(!prepared && found.closed_through_view == Some(1)),
        }
    }
}

/// A new view the replica led and its log lacks (it may have had no proposals, so no vote
/// shows it) closes its view: it would otherwise sign a second one for that view.
#[test]
fn a_lost_new_view_it_led_closes_its_view() {
    let mut restored = checking();
    let changes = [0, 2, 3].map(|signer| view_change_of(signer, 1)).to_vec();
    let led = pbft_core::testing::new_view(1, 1, changes, Vec::new());
    let mut outputs = Vec::new();
    for peer in [0, 2, 3] {
        let bytes = Message::RecoveryAnswer(RecoveryAnswer {
            epoch: 0,
            votes: Vec::new(),
            view_change: None,
            view: 1,
            led: (peer == 0).then(|| Box::new(led.clone())),
            stable: pbft_core::StableCheckpoint::genesis(),
        })
        .encode();
        restored.handle_message(NOW, &key_of(peer), &bytes).unwrap();
        outputs.extend(drain(&mut restored));
    }
    let found = report(&outputs);
    assert_eq!((found.lost, found.closed_through_view), (1, Some(1)));
    let outputs = view_changes(&mut restored, 1, &[0, 2, 3]);
    assert_eq!(signed_views(&outputs), (vec![], vec![]));
}

/// A peer that entered a later view dropped the slot's votes, but keeps the quorum
/// certificate: the asker's commit inside it is reported, so a rolled-back validator that
/// helped commit a batch finds that out and does not leave the batch out of a view change.
#[test]
fn an_answer_reports_the_askers_commit_inside_a_quorum_certificate() {
    let mut peer = replica(0, small_config());
    let certified = pbft_core::testing::committed(1, &batch(&[1]));
    let bytes = Message::Committed(certified.clone()).encode();
    peer.handle_message(NOW, &key_of(2), &bytes).unwrap();
    drain(&mut peer);
    let query = Message::RecoveryQuery(pbft_core::RecoveryQuery { epoch: 0 }).encode();
    peer.handle_message(NOW, &key_of(1), &query).unwrap();
    let answers: Vec<RecoveryAnswer> = drain(&mut peer)
        .into_iter()
        .filter_map(|output| match output {
            Output::Send { bytes, .. } => match Message::decode(&bytes, usize::MAX) {
                Ok(Message::RecoveryAnswer(answer)) => Some(answer),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let [answer] = answers.as_slice() else {
        panic!("one answer, got {}", answers.len());
    };
    let commit = vote_for(1, Phase::Commit, (0, 1), certified.certificate.digest);
    assert!(answer.votes.contains(&commit), "{:?}", answer.votes);
}
