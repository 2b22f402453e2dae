//! A replica whose own state at a stable checkpoint is not the one a quorum signed (its
//! execution diverged: corruption, a bug, a bad restore) stops executing, says so, and fetches
//! the stable checkpoint's state by state transfer instead of going on from a wrong state.

use pbft_core::testing::{NOW, batch, committed, drain, key_of, small_config, vote_for};
use pbft_core::{Destination, Digest, Message, Output, Phase, PublicKey, Record, Replica};

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

/// Checks that `outputs` report the divergence at seq 2 and fetch the state, then that the
/// transfer installs the quorum's state, after which execution resumes at seq 3.
fn refetches_and_resumes(subject: &mut Replica, peer: &mut Replica, outputs: Vec<Output>) {
    assert!(
        fetches(&outputs).iter().any(|fetch| fetch.seq == 2),
        "the replica went on with its own state at the stable checkpoint instead of fetching \
         the quorum's: {:?}",
        kinds(&outputs)
    );
    assert!(
        outputs
            .iter()
            .any(|output| matches!(output, Output::StateDiverged { seq: 2, .. })),
        "the divergence is an output: {:?}",
        kinds(&outputs)
    );
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
