//! A replica whose own state at a stable checkpoint is not the one a quorum signed (its
//! execution diverged: corruption, a bug, a bad restore) stops executing, says so, and fetches
//! the stable checkpoint's state by state transfer instead of going on from a wrong state.

use pbft_core::testing::{
    NOW, batch, committed, drain, key_of, small_config, validator_key, validator_set, vote_for,
};
use pbft_core::{
    Destination, Digest, ExecutedState, Message, Output, Phase, PublicKey, Record, Replica,
};

/// The application state every honest replica reaches at seq 2.
const GOOD: &[u8] = b"the state at seq 2";

/// A validator of the set of 4 with the small config (a checkpoint every 2 seqs).
fn replica(index: usize) -> Replica {
    pbft_core::testing::replica(index, small_config())
}

/// Hands `replica` the committed batch at `seq` (QC from validators 0 to 2).
fn commit(replica: &mut Replica, seq: u64) {
    let bytes = Message::Committed(committed(seq, &batch(&[seq]))).encode();
    replica.handle_message(NOW, &key_of(0), &bytes).unwrap();
}

/// Executes every delivery among `outputs`, answering a checkpoint with `snapshot`; returns
/// the outputs, with those the executions produced.
fn execute(replica: &mut Replica, outputs: Vec<Output>, snapshot: &[u8]) -> Vec<Output> {
    let mut all = Vec::new();
    let mut pending = outputs;
    while !pending.is_empty() {
        for output in std::mem::take(&mut pending) {
            if let Output::Deliver(delivery) = &output {
                let results = delivery.execute.iter().map(|_| b"ok".to_vec()).collect();
                let state = delivery.checkpoint.then(|| snapshot.to_vec());
                replica.executed(NOW, delivery.seq, results, state).unwrap();
                pending.extend(drain(replica));
            }
            all.push(output);
        }
    }
    all
}

/// Commits and executes seqs 1 and 2 on `replica` with `snapshot` as its state at seq 2.
fn run_to_checkpoint(replica: &mut Replica, snapshot: &[u8]) -> Vec<Output> {
    let mut outputs = Vec::new();
    for seq in 1..=2 {
        commit(replica, seq);
        let delivered = drain(replica);
        outputs.extend(execute(replica, delivered, snapshot));
    }
    outputs
}

/// The checkpoint vote a replica signed among `outputs`.
fn checkpoint_vote(outputs: &[Output]) -> pbft_core::Vote {
    outputs
        .iter()
        .find_map(|output| match output {
            Output::Persist(Record::Signed(vote)) if vote.phase == Phase::Checkpoint => {
                Some(vote.clone())
            }
            _ => None,
        })
        .expect("a checkpoint vote")
}

/// Validators 0, 1 and 2 sign `state` at seq 2: validator 2's vote is `good`.
fn quorum_votes(good: &pbft_core::Vote) -> Vec<(PublicKey, Vec<u8>)> {
    let state: Digest = good.digest;
    [
        vote_for(0, Phase::Checkpoint, (0, 2), state),
        vote_for(1, Phase::Checkpoint, (0, 2), state),
        good.clone(),
    ]
    .into_iter()
    .map(|vote| {
        (
            key_of(usize::from(vote.replica.0)),
            Message::Vote(vote).encode(),
        )
    })
    .collect()
}

fn fetches(outputs: &[Output]) -> Vec<pbft_core::FetchState> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { bytes, .. } => match Message::decode(bytes, usize::MAX) {
                Ok(Message::FetchState(fetch)) => Some(fetch),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A short description of outputs, for failure messages.
fn kinds(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|output| match output {
            Output::Send { bytes, .. } => match Message::decode(bytes, usize::MAX) {
                Ok(message) => format!("send {}", message.kind()),
                Err(_) => "send ?".into(),
            },
            Output::Persist(_) => "persist".into(),
            Output::Deliver(delivery) => format!("deliver {}", delivery.seq),
            Output::Install(install) => format!("install {}", install.seq),
            other => format!("{other:?}").chars().take(40).collect(),
        })
        .collect()
}

/// The validator `outputs` send their first state fetch to.
fn asked(outputs: &[Output]) -> Option<usize> {
    outputs.iter().find_map(|output| match output {
        Output::Send {
            to: Destination::Validator(id),
            bytes,
        } if matches!(
            Message::decode(bytes, usize::MAX),
            Ok(Message::FetchState(_))
        ) =>
        {
            Some(usize::from(id.0))
        }
        _ => None,
    })
}

/// Serves `subject`'s state fetches from `peer` (answering as whichever validator the subject
/// asked: they all hold the same state) until the subject installs; returns the subject's
/// outputs along the way.
fn transfer(subject: &mut Replica, peer: &mut Replica, first: Vec<Output>) -> Vec<Output> {
    let mut seen = Vec::new();
    let mut outputs = first;
    for _ in 0..16 {
        let fetched = fetches(&outputs);
        let answering = asked(&outputs);
        seen.extend(outputs);
        let Some(answering) = answering else {
            break;
        };
        for fetch in fetched {
            let bytes = Message::FetchState(fetch).encode();
            peer.handle_message(NOW, &key_of(3), &bytes).unwrap();
        }
        for answer in drain(peer) {
            if let Output::Send { bytes, .. } = answer {
                subject
                    .handle_message(NOW, &key_of(answering), &bytes)
                    .unwrap();
            }
        }
        outputs = drain(subject);
    }
    seen
}

/// Checks that `outputs` report the replica's state at seq 2 as diverged.
fn reports_divergence_at_2(outputs: &[Output]) {
    assert!(
        outputs
            .iter()
            .any(|output| matches!(output, Output::StateDiverged { seq: 2, .. })),
        "the divergence is an output: {:?}",
        kinds(outputs)
    );
}

/// Checks that `outputs` report the divergence at seq 2 and fetch the state, then that the
/// transfer installs the quorum's state, after which execution resumes at seq 3.
fn refetches_and_resumes(subject: &mut Replica, peer: &mut Replica, outputs: Vec<Output>) {
    assert!(
        fetches(&outputs).iter().any(|fetch| fetch.seq == 2),
        "the replica went on with its own state at the stable checkpoint instead of fetching \
         the quorum's: {:?}",
        kinds(&outputs)
    );
    reports_divergence_at_2(&outputs);
    assert_eq!(subject.metrics().checkpoint_mismatches, 1);
    assert_eq!(
        subject.checkpoint_state(2),
        None,
        "its own state at seq 2 is never served"
    );
    // It executes nothing on the wrong state while the transfer runs.
    commit(subject, 3);
    let meanwhile = drain(subject);
    assert!(
        !meanwhile.iter().any(|o| matches!(o, Output::Deliver(_))),
        "delivered on a diverged state: {:?}",
        kinds(&meanwhile)
    );
    let outputs = transfer(subject, peer, outputs);
    let install = outputs
        .iter()
        .find_map(|output| match output {
            Output::Install(install) => Some(install),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no install: {:?}", kinds(&outputs)));
    assert_eq!((install.seq, install.snapshot.as_slice()), (2, GOOD));
    assert_eq!(subject.executed_seq(), 2);
    assert_eq!(
        subject.checkpoint_state(2).map(|state| state.app),
        Some(GOOD.to_vec())
    );
    assert_eq!(subject.metrics().state_transfers, 1);
    // Execution resumes from the installed state.
    let index = outputs
        .iter()
        .position(|o| matches!(o, Output::Install(_)))
        .unwrap_or_default();
    assert!(
        outputs[index..]
            .iter()
            .any(|o| matches!(o, Output::Deliver(d) if d.seq == 3)),
        "seq 3 is delivered again after the install: {:?}",
        kinds(&outputs)
    );
}

#[test]
fn a_replica_whose_checkpoint_differs_from_the_stable_one_fetches_the_stable_state() {
    let mut peer = replica(2);
    let good = checkpoint_vote(&run_to_checkpoint(&mut peer, GOOD));
    let mut subject = replica(3);
    let own = checkpoint_vote(&run_to_checkpoint(&mut subject, b"corrupted"));
    assert_ne!(own.digest, good.digest);
    for (signer, bytes) in quorum_votes(&good) {
        subject.handle_message(NOW, &signer, &bytes).unwrap();
    }
    assert_eq!(subject.stable_checkpoint().seq, 2);
    let outputs = drain(&mut subject);
    refetches_and_resumes(&mut subject, &mut peer, outputs);
}

#[test]
fn a_replica_that_reaches_another_state_at_a_checkpoint_already_stable_fetches_it() {
    let mut peer = replica(2);
    let good = checkpoint_vote(&run_to_checkpoint(&mut peer, GOOD));
    let mut subject = replica(3);
    // The quorum's checkpoint is stable here before this replica executes up to it.
    for (signer, bytes) in quorum_votes(&good) {
        subject.handle_message(NOW, &signer, &bytes).unwrap();
    }
    assert_eq!(subject.stable_checkpoint().seq, 2);
    drain(&mut subject);
    let outputs = run_to_checkpoint(&mut subject, b"corrupted");
    refetches_and_resumes(&mut subject, &mut peer, outputs);
}

/// Commits seq `seq` on `replica` and executes what it delivers; a checkpoint's snapshot is
/// deferred ([`Replica::executed_deferring`]) and its job returned with the outputs.
fn run_deferring(replica: &mut Replica, seq: u64) -> (Vec<Output>, Option<pbft_core::SnapshotJob>) {
    commit(replica, seq);
    let delivered = drain(replica);
    execute_deferring(replica, delivered)
}

/// Executes every delivery among `outputs` (and those they lead to), deferring checkpoint
/// snapshots; the outputs, and the last job.
fn execute_deferring(
    replica: &mut Replica,
    outputs: Vec<Output>,
) -> (Vec<Output>, Option<pbft_core::SnapshotJob>) {
    let mut all = Vec::new();
    let mut job = None;
    let mut pending = outputs;
    while !pending.is_empty() {
        for output in std::mem::take(&mut pending) {
            if let Output::Deliver(delivery) = &output {
                let results = delivery.execute.iter().map(|_| b"ok".to_vec()).collect();
                match delivery.checkpoint {
                    true => {
                        let deferred = replica.executed_deferring(NOW, delivery.seq, results);
                        job = deferred.unwrap();
                    }
                    false => replica.executed(NOW, delivery.seq, results, None).unwrap(),
                }
                pending.extend(drain(replica));
            }
            all.push(output);
        }
    }
    (all, job)
}

fn has_checkpoint_vote(outputs: &[Output]) -> bool {
    outputs.iter().any(|output| {
        matches!(output, Output::Persist(Record::Signed(vote)) if vote.phase == Phase::Checkpoint)
    })
}

#[test]
fn a_deferred_snapshot_is_signed_when_it_comes_back_as_of_its_seq() {
    let mut peer = replica(2);
    let good = checkpoint_vote(&run_to_checkpoint(&mut peer, GOOD));
    let mut subject = replica(3);
    assert!(
        run_deferring(&mut subject, 1).1.is_none(),
        "no checkpoint at 1"
    );
    let (outputs, job) = run_deferring(&mut subject, 2);
    let job = job.expect("a job at the checkpoint");
    assert_eq!(job.seq(), 2);
    assert!(
        !has_checkpoint_vote(&outputs),
        "nothing to sign before the snapshot"
    );
    assert!(!subject.holds_checkpoint_state(2));
    // The replica goes on: seq 3 executes (and changes the exactly-once table) before the
    // snapshot of seq 2 is back. The job holds the table as of seq 2.
    let (outputs, _) = run_deferring(&mut subject, 3);
    assert_eq!(subject.executed_seq(), 3, "{:?}", kinds(&outputs));
    subject
        .snapshot_taken(NOW, job.finish(GOOD.to_vec()))
        .unwrap();
    let vote = checkpoint_vote(&drain(&mut subject));
    assert_eq!(
        vote.digest, good.digest,
        "the deferred state digest equals the one taken within the execution report"
    );
    assert_eq!(
        subject.checkpoint_state(2).map(|state| state.app),
        Some(GOOD.to_vec())
    );
}

#[test]
fn a_deferral_is_refused_off_a_checkpoint_and_a_result_not_awaited_is_dropped() {
    let mut subject = replica(3);
    commit(&mut subject, 1);
    drain(&mut subject);
    assert!(matches!(
        subject.executed_deferring(NOW, 1, vec![b"ok".to_vec()]),
        Err(pbft_core::Error::HostContract(_))
    ));
    // Refused without a change: the same report, made right, is taken.
    subject
        .executed(NOW, 1, vec![b"ok".to_vec()], None)
        .unwrap();
    assert_eq!(subject.executed_seq(), 1);
    let (_, job) = run_deferring(&mut subject, 2);
    subject
        .snapshot_taken(NOW, job.expect("a job at seq 2").finish(GOOD.to_vec()))
        .unwrap();
    let kept = subject.checkpoint_state(2);
    assert!(kept.is_some());
    drain(&mut subject);
    // A result at seq 2 that is no longer awaited (a second one; one an install cancelled)
    // changes nothing and signs nothing.
    let mut other = replica(2);
    run_deferring(&mut other, 1);
    let (_, other_job) = run_deferring(&mut other, 2);
    let stray = other_job
        .expect("a job at seq 2")
        .finish(b"another state".to_vec());
    assert!(!subject.snapshot_taken(NOW, stray).unwrap(), "not kept");
    assert_eq!(subject.checkpoint_state(2), kept);
    assert!(!has_checkpoint_vote(&drain(&mut subject)));
}

/// A replica that executed seq 2 and is taking its snapshot when `peer`'s quorum makes the
/// checkpoint at 2 stable: the replica and its job at 2.
fn stable_while_taking_2(peer: &mut Replica) -> (Replica, pbft_core::SnapshotJob) {
    let good = checkpoint_vote(&run_to_checkpoint(peer, GOOD));
    let mut subject = replica(3);
    run_deferring(&mut subject, 1);
    let (_, job) = run_deferring(&mut subject, 2);
    for (signer, bytes) in quorum_votes(&good) {
        subject.handle_message(NOW, &signer, &bytes).unwrap();
    }
    assert_eq!(subject.stable_checkpoint().seq, 2);
    (subject, job.expect("a job at seq 2"))
}

#[test]
fn a_deferred_snapshot_of_a_diverged_state_fetches_the_stable_one() {
    let mut peer = replica(2);
    // The quorum's checkpoint becomes stable while this replica's snapshot is being taken:
    // nothing to compare yet.
    let (mut subject, job) = stable_while_taking_2(&mut peer);
    let quiet = drain(&mut subject);
    assert!(
        !quiet
            .iter()
            .any(|o| matches!(o, Output::StateDiverged { .. })),
        "{:?}",
        kinds(&quiet)
    );
    // The snapshot comes back with another state: compared then.
    subject
        .snapshot_taken(NOW, job.finish(b"corrupted".to_vec()))
        .unwrap();
    let outputs = drain(&mut subject);
    refetches_and_resumes(&mut subject, &mut peer, outputs);
}

/// A replica whose state at seq 2 is wrong (taken at once) and whose snapshot at 4 is being
/// taken when `peer`'s quorum at 2 proves it wrong: the replica, its job at 4, and the
/// outputs of the quorum's votes.
fn diverged_while_taking_4(peer: &mut Replica) -> (Replica, pbft_core::SnapshotJob, Vec<Output>) {
    let good = checkpoint_vote(&run_to_checkpoint(peer, GOOD));
    let mut subject = replica(3);
    run_to_checkpoint(&mut subject, b"corrupted");
    run_deferring(&mut subject, 3);
    let (_, job) = run_deferring(&mut subject, 4);
    let job = job.expect("a job at seq 4, on the diverged state");
    for (signer, bytes) in quorum_votes(&good) {
        subject.handle_message(NOW, &signer, &bytes).unwrap();
    }
    let outputs = drain(&mut subject);
    (subject, job, outputs)
}

/// Validators 0 to 2 sign another state at seq 4: it becomes stable at `replica`.
fn stabilize_4(replica: &mut Replica) {
    for signer in 0..3 {
        let vote = vote_for(signer, Phase::Checkpoint, (0, 4), Digest([4; 32]));
        let bytes = Message::Vote(vote).encode();
        replica
            .handle_message(NOW, &key_of(signer), &bytes)
            .unwrap();
    }
    assert_eq!(replica.stable_checkpoint().seq, 4);
    drain(replica);
}

#[test]
fn a_snapshot_of_a_state_found_diverged_meanwhile_is_never_signed() {
    let mut peer = replica(2);
    let (mut subject, job, outputs) = diverged_while_taking_4(&mut peer);
    reports_divergence_at_2(&outputs);
    // The snapshot at 4 comes back: a state after the divergence, never signed nor served.
    subject
        .snapshot_taken(NOW, job.finish(b"later".to_vec()))
        .unwrap();
    assert!(!has_checkpoint_vote(&drain(&mut subject)));
    assert!(!subject.holds_checkpoint_state(4));
}

#[test]
fn a_job_from_before_a_repair_is_not_taken_for_the_one_after_it() {
    let mut peer = replica(2);
    let (mut subject, stale, outputs) = diverged_while_taking_4(&mut peer);
    // The repair installs the quorum's state at 2 and executes 3 and 4 again: a new job at 4.
    let outputs = transfer(&mut subject, &mut peer, outputs);
    assert!(
        outputs.iter().any(|o| matches!(o, Output::Install(_))),
        "{:?}",
        kinds(&outputs)
    );
    let (_, fresh) = execute_deferring(&mut subject, outputs);
    let fresh = fresh.expect("a job at seq 4 again");
    assert_eq!((stale.seq(), fresh.seq()), (4, 4));
    // The job from before the repair comes back first (the host's thread runs them in
    // order): its state is the diverged one, never signed nor kept.
    let kept = subject
        .snapshot_taken(NOW, stale.finish(b"diverged at 4".to_vec()))
        .unwrap();
    assert!(!kept);
    assert!(!has_checkpoint_vote(&drain(&mut subject)));
    assert!(!subject.holds_checkpoint_state(4));
    let kept = subject
        .snapshot_taken(NOW, fresh.finish(b"repaired at 4".to_vec()))
        .unwrap();
    assert!(kept);
    assert!(has_checkpoint_vote(&drain(&mut subject)));
    assert_eq!(
        subject.checkpoint_state(4).map(|state| state.app),
        Some(b"repaired at 4".to_vec())
    );
}

#[test]
fn a_snapshot_back_after_the_quorum_moved_past_it_is_still_compared() {
    let mut peer = replica(2);
    // The checkpoints at 2 and then 4 become stable while this replica's snapshot at 2 is
    // still being taken.
    let (mut subject, job) = stable_while_taking_2(&mut peer);
    stabilize_4(&mut subject);
    // Its state at 2 comes back, and is not the quorum's there.
    subject
        .snapshot_taken(NOW, job.finish(b"corrupted".to_vec()))
        .unwrap();
    let outputs = drain(&mut subject);
    reports_divergence_at_2(&outputs);
    assert_eq!(subject.metrics().checkpoint_mismatches, 1);
}

#[test]
fn a_snapshot_deferred_at_a_checkpoint_already_stable_is_compared_after_the_quorum_moves_on() {
    let mut peer = replica(2);
    let good = checkpoint_vote(&run_to_checkpoint(&mut peer, GOOD));
    let mut subject = replica(3);
    // Behind: the checkpoint at 2 is stable before this replica executes it.
    for (signer, bytes) in quorum_votes(&good) {
        subject.handle_message(NOW, &signer, &bytes).unwrap();
    }
    drain(&mut subject);
    run_deferring(&mut subject, 1);
    let (_, job) = run_deferring(&mut subject, 2);
    let job = job.expect("a job at seq 2");
    stabilize_4(&mut subject);
    let kept = subject
        .snapshot_taken(NOW, job.finish(b"corrupted".to_vec()))
        .unwrap();
    assert!(!kept, "below the stable checkpoint: compared, not kept");
    let outputs = drain(&mut subject);
    reports_divergence_at_2(&outputs);
}

/// A crash between executing a checkpoint seq and logging its vote (or rollback protection
/// withholding the vote until the crash): the store kept the state, the log has no vote. The
/// store will not execute that seq again, so the restored replica signs its vote from the
/// kept state, or the checkpoint could wait for it forever (a quorum that needs it).
#[test]
fn a_checkpoint_state_kept_without_its_vote_is_signed_after_a_restart() {
    let mut before = replica(2);
    let outputs = run_to_checkpoint(&mut before, GOOD);
    let signed = checkpoint_vote(&outputs);
    let state = before.checkpoint_state(2).expect("the state at seq 2");
    let executed = ExecutedState {
        executed: 2,
        committed: (1..=2).map(|seq| committed(seq, &batch(&[seq]))).collect(),
        checkpoints: vec![state],
        ..ExecutedState::default()
    };
    let mut restored = Replica::restore(
        small_config(),
        validator_set(4),
        validator_key(2),
        Vec::new(),
        executed,
    )
    .unwrap();
    restored.handle_timeout(NOW);
    let votes: Vec<_> = drain(&mut restored)
        .into_iter()
        .filter_map(|output| match output {
            Output::Persist(Record::Signed(vote)) if vote.phase == Phase::Checkpoint => Some(vote),
            _ => None,
        })
        .collect();
    assert_eq!(votes, [signed], "the same vote as before the crash");
    assert!(restored.holds_checkpoint_state(2));
}
