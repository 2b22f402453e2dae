//! Fuzz targets. Each holds for every input: no panic, and memory within the config's bounds.

use std::time::Duration;

use bolero::check;
use pbft_core::testing::{
    batch, chain, client_key, committed, key_of, new_view, pre_prepare, request, small_config,
    validator_set, view_change, vote,
};
use pbft_core::{
    Client, Config, FetchState, Manifest, Message, Phase, PublicKey, QuorumCertificate, Replica,
    StateChunk, Status, ValidatorSet, ViewChange, verify_qc,
};

/// Time each target gets under `cargo test` (override with BOLERO_RANDOM_TEST_TIME_MS).
const TEST_TIME: Duration = Duration::from_secs(8);

const VALIDATORS: usize = 4;

fn set() -> ValidatorSet {
    validator_set(VALIDATORS)
}

fn config() -> Config {
    let mut config = small_config();
    config.retained_batches = 8;
    config.max_future_per_peer = 8;
    config.max_pending_requests = 16;
    config.max_batch_ops = 4;
    config.max_clients = 8;
    config
}

/// Valid messages of every kind, for the fuzzer to replay and mutate.
fn valid_messages() -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    for seq in 1..=6u64 {
        messages.push(Message::Request(request(seq)).encode());
        let batch = batch(&[seq]);
        messages.push(pre_prepare(0, (0, seq), &batch));
        for signer in 1..VALIDATORS {
            messages.push(Message::Vote(vote(signer, Phase::Prepare, (0, seq), &batch)).encode());
            messages.push(Message::Vote(vote(signer, Phase::Commit, (0, seq), &batch)).encode());
        }
        messages.push(Message::Committed(committed(seq, &batch)).encode());
        messages.push(
            Message::Status(Status {
                view: seq % 3,
                normal: seq % 2 == 0,
                stable: 0,
                executed: seq - 1,
                slots: vec![0, 1, 3],
            })
            .encode(),
        );
    }
    // View changes to view 1 from every validator, and the new view they make.
    let changes: Vec<ViewChange> = (0..VALIDATORS)
        .map(|signer| view_change(signer, 1, Vec::new()))
        .collect();
    for change in &changes {
        messages.push(Message::ViewChange(change.clone()).encode());
    }
    let new_view = new_view(1, 1, changes[1..].to_vec(), Vec::new());
    messages.push(Message::NewView(new_view).encode());
    // State transfer: requests, a manifest and a chunk (valid shapes, for mutation).
    for chunk in [None, Some(0), Some(3)] {
        messages.push(Message::FetchState(FetchState { seq: 2, chunk }).encode());
    }
    messages.push(
        Message::StateManifest(Manifest {
            seq: 2,
            app_root: pbft_core::Digest([3; 32]),
            app_len: 100,
            chunk_bytes: 64,
            clients: vec![0, 0],
        })
        .encode(),
    );
    messages.push(
        Message::StateChunk(StateChunk {
            seq: 2,
            index: 1,
            bytes: vec![9; 36],
            proof: pbft_core::InclusionProof {
                index: 1,
                count: 2,
                path: vec![pbft_core::Digest([4; 32])],
            },
        })
        .encode(),
    );
    messages
}

#[test]
fn decode_any_bytes() {
    check!().with_test_time(TEST_TIME).for_each(|bytes: &[u8]| {
        if let Ok(message) = Message::decode(bytes, 1 << 20) {
            let again = Message::decode(&message.encode(), 1 << 20);
            assert_eq!(
                again.as_ref(),
                Ok(&message),
                "decoding is stable under re-encoding"
            );
        }
    });
}

#[test]
fn replica_survives_any_input_sequence() {
    let pool = valid_messages();
    let senders: Vec<PublicKey> = (0..VALIDATORS)
        .map(key_of)
        .chain([PublicKey([9; 32]), client_key(0).public_key()])
        .collect();
    check!()
        .with_test_time(TEST_TIME)
        .with_type::<Vec<(u8, u8, u16, u8, Vec<u8>)>>()
        .for_each(|inputs| {
            let mut replicas: Vec<Replica> = (0..2)
                .map(|index| pbft_core::testing::replica(index, config()))
                .collect();
            for (step, (selector, index, position, flip, raw)) in inputs.iter().enumerate() {
                let from = &senders[*index as usize % senders.len()];
                let pick = &pool[*index as usize % pool.len()];
                let bytes = match selector % 3 {
                    0 => raw.clone(),
                    1 => pick.clone(),
                    _ => {
                        let mut mutated = pick.clone();
                        let at = *position as usize % mutated.len();
                        mutated[at] ^= flip.max(&1);
                        mutated
                    }
                };
                let now = step as u64;
                for replica in &mut replicas {
                    let _ = replica.handle_message(now, from, &bytes);
                    if selector % 7 == 0 {
                        replica.handle_timeout(now + 10);
                    }
                    while replica.poll_output().is_some() {}
                    assert!(replica.memory_footprint() <= replica.memory_bound());
                }
            }
        });
}

#[test]
fn client_survives_any_reply() {
    check!().with_test_time(TEST_TIME).for_each(|bytes: &[u8]| {
        let mut client = Client::new(chain(), client_key(5), set(), 1);
        client.request(0, b"op".to_vec());
        let _ = client.handle_reply(bytes);
    });
}

#[test]
fn certificate_checks_survive_any_certificate() {
    let set = set();
    check!().with_test_time(TEST_TIME).for_each(|bytes: &[u8]| {
        if let Ok(qc) = postcard::from_bytes::<QuorumCertificate>(bytes) {
            let _ = verify_qc(&chain(), &set, &qc);
        }
        if let Ok(evidence) = postcard::from_bytes::<pbft_core::Evidence>(bytes) {
            let _ = pbft_core::verify_evidence(&chain(), &set, &evidence);
        }
    });
}
