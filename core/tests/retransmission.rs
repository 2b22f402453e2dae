//! Repairing lost messages: a replica that missed a commit gets it from a peer's answer to
//! its status, and a peer answers a status at most once per interval, only to its sender.

use pbft_core::testing::{NOW, chain, key_of, replica, request, small_config};
use pbft_core::{Config, Destination, Error, Message, Output, Replica, Status};

/// Four replicas, checkpointing only once the window (4) is full.
fn cluster() -> Vec<Replica> {
    let mut config = small_config();
    config.checkpoint_interval = 4;
    (0..4).map(|index| replica(index, config.clone())).collect()
}

/// Runs messages among `up` (the others hear nothing) until quiet; executes deliveries.
fn run(replicas: &mut [Replica], up: &[usize], mut queue: Vec<(usize, usize, Vec<u8>)>) {
    while let Some((from, to, bytes)) = queue.pop() {
        if up.contains(&to) {
            let _ = replicas[to].handle_message(NOW, &key_of(from), &bytes);
            drain(replicas, to, &mut queue);
        }
    }
}

fn drain(replicas: &mut [Replica], index: usize, queue: &mut Vec<(usize, usize, Vec<u8>)>) {
    while let Some(output) = replicas[index].poll_output() {
        match output {
            Output::Send {
                to: Destination::AllValidators,
                bytes,
            } => {
                for peer in (0..4).filter(|&p| p != index) {
                    queue.push((index, peer, bytes.clone()));
                }
            }
            Output::Send {
                to: Destination::Validator(id),
                bytes,
            } => {
                queue.push((index, id.0 as usize, bytes));
            }
            Output::Deliver(delivery) => {
                let results = vec![Vec::new(); delivery.execute.len()];
                let snapshot = delivery.checkpoint.then(Vec::new);
                replicas[index]
                    .executed(NOW, delivery.seq, results, snapshot)
                    .unwrap();
            }
            _ => {}
        }
    }
}

fn status(executed: u64) -> Vec<u8> {
    Message::Status(Status {
        epoch: 0,
        view: 0,
        normal: true,
        stable: 0,
        executed,
        slots: Vec::new(),
    })
    .encode()
}

#[test]
fn a_replica_that_missed_a_commit_gets_it_from_one_answer_to_its_status() {
    let mut replicas = cluster();
    replicas[0].submit(NOW, request(1)).unwrap();
    let mut queue = Vec::new();
    drain(&mut replicas, 0, &mut queue);
    // Replica 3 hears nothing; the other three commit seq 1 without it.
    run(&mut replicas, &[0, 1, 2], queue);
    assert_eq!(replicas[1].executed_seq(), 1);
    assert_eq!(replicas[3].executed_seq(), 0);

    let from = key_of(3);
    replicas[1].handle_message(NOW, &from, &status(0)).unwrap();
    let answers: Vec<Output> = std::iter::from_fn(|| replicas[1].poll_output()).collect();
    assert!(!answers.is_empty());
    let mut committed = None;
    for answer in &answers {
        let Output::Send { to, bytes } = answer else {
            panic!("a status is answered with sends only, got {answer:?}");
        };
        assert_eq!(
            *to,
            Destination::Validator(pbft_core::ReplicaId(3)),
            "to the asker only"
        );
        if let Ok(Message::Committed(c)) = Message::decode(bytes, usize::MAX) {
            committed = Some(bytes.clone());
            assert_eq!(c.certificate.seq, 1);
        }
    }
    // The same question again within the interval costs nothing but a counter.
    assert_eq!(
        replicas[1].handle_message(NOW + 1, &from, &status(0)),
        Err(Error::RateLimited)
    );
    assert!(replicas[1].poll_output().is_none());
    // The committed batch carries its QC: replica 3 delivers it without any vote of its own.
    let bytes = committed.expect("the answer carries the committed batch");
    replicas[3].handle_message(NOW, &key_of(1), &bytes).unwrap();
    let delivered = std::iter::from_fn(|| replicas[3].poll_output())
        .any(|o| matches!(o, Output::Deliver(d) if d.seq == 1));
    assert!(delivered);
    // After the interval the peer answers again.
    let later = NOW + Config::new(chain()).retransmit_ms;
    replicas[1]
        .handle_message(later, &from, &status(0))
        .unwrap();
    assert!(replicas[1].poll_output().is_some());
}

#[test]
fn a_status_claiming_more_than_a_window_of_slots_is_refused() {
    let mut replicas = cluster();
    let bytes = Message::Status(Status {
        epoch: 0,
        view: 0,
        normal: true,
        stable: 0,
        executed: 0,
        slots: vec![0; 5],
    })
    .encode();
    assert!(matches!(
        replicas[0].handle_message(NOW, &key_of(1), &bytes),
        Err(Error::UnexpectedMessage(_))
    ));
}

#[test]
fn a_committed_copy_with_other_client_signatures_leaves_the_checked_batch_in_place() {
    let mut backup = replica(1, small_config());
    let batch = pbft_core::Batch::of(vec![request(1), request(2)]);
    let pre_prepare = pbft_core::testing::pre_prepare(0, (0, 1), &batch);
    backup
        .handle_message(NOW, &key_of(0), &pre_prepare)
        .unwrap();
    // The same requests under junk signatures have the same digest (it leaves signatures
    // out), so a peer can send them under the slot's real QC.
    let mut junk = batch.clone();
    for request in &mut junk.requests {
        request.signature = pbft_core::Signature([5; 64]);
    }
    assert_eq!(junk.digest(&chain()), batch.digest(&chain()));
    let committed = Message::Committed(pbft_core::testing::committed(1, &junk)).encode();
    backup.handle_message(NOW, &key_of(2), &committed).unwrap();
    let delivered: Vec<_> = std::iter::from_fn(|| backup.poll_output())
        .filter_map(|output| match output {
            Output::Deliver(delivery) => Some(delivery.batch),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        vec![batch],
        "the batch whose signatures were checked"
    );
}
