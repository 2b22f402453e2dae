//! Fuzz targets. Each holds for every input: no panic, and memory within the config's bounds.

use std::time::Duration;

use bolero::check;
use pbft_core::{
    Batch, Client, Committed, Config, FetchState, Keypair, Manifest, Message, NewView, Phase,
    PrePrepare, PublicKey, QuorumCertificate, Replica, ReplicaId, Request, Signature,
    StableCheckpoint, StateChunk, Status, ValidatorSet, ViewChange, Vote, verify_qc,
};
use pbft_sim::{chain, validator_keys};

/// Time each target gets under `cargo test` (override with BOLERO_RANDOM_TEST_TIME_MS).
const TEST_TIME: Duration = Duration::from_secs(8);

const VALIDATORS: usize = 4;

fn set() -> ValidatorSet {
    let keys: Vec<PublicKey> = validator_keys(VALIDATORS)
        .iter()
        .map(Keypair::public_key)
        .collect();
    ValidatorSet::new(0, &keys).expect("valid keys")
}

fn config() -> Config {
    let mut config = Config::new(chain());
    config.window = 4;
    config.checkpoint_interval = 2;
    config.retained_batches = 8;
    config.max_future_per_peer = 8;
    config.max_pending_requests = 16;
    config.max_batch_ops = 4;
    config.max_clients = 8;
    config
}

/// Valid messages of every kind, for the fuzzer to replay and mutate.
fn valid_messages() -> Vec<Vec<u8>> {
    let keys = validator_keys(VALIDATORS);
    let client = Keypair::from_seed(&[77; 32]);
    let mut messages = Vec::new();
    for seq in 1..=6u64 {
        let request = Request::new(&chain(), &client, seq, vec![seq as u8; 8]);
        messages.push(Message::Request(request.clone()).encode());
        let batch = Batch {
            requests: vec![request],
        };
        let digest = batch.digest(&chain());
        let vote = |phase, signer: usize| {
            Vote::new(
                &chain(),
                0,
                phase,
                (0, seq),
                digest,
                ReplicaId(signer as u16),
                &keys[signer],
            )
        };
        messages.push(
            Message::PrePrepare(PrePrepare {
                vote: vote(Phase::PrePrepare, 0),
                batch,
            })
            .encode(),
        );
        for signer in 1..VALIDATORS {
            messages.push(Message::Vote(vote(Phase::Prepare, signer)).encode());
            messages.push(Message::Vote(vote(Phase::Commit, signer)).encode());
        }
        let signatures = (0..3)
            .map(|signer| {
                (
                    ReplicaId(signer as u16),
                    vote(Phase::Commit, signer).signature,
                )
            })
            .collect();
        let certificate = QuorumCertificate {
            chain_id: chain(),
            epoch: 0,
            view: 0,
            seq,
            digest,
            signatures,
        };
        let batch = Batch {
            requests: vec![Request::new(&chain(), &client, seq, vec![seq as u8; 8])],
        };
        messages.push(Message::Committed(Committed { batch, certificate }).encode());
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
        .map(|signer| {
            ViewChange::new(
                &chain(),
                0,
                (1, ReplicaId(signer as u16)),
                StableCheckpoint::genesis(),
                Vec::new(),
                &keys[signer],
            )
        })
        .collect();
    for change in &changes {
        messages.push(Message::ViewChange(change.clone()).encode());
    }
    let mut new_view = NewView {
        view: 1,
        view_changes: changes[1..].to_vec(),
        proposals: Vec::new(),
        signature: Signature([0; 64]),
    };
    new_view.signature = keys[1].sign(&new_view.signed_digest(&chain(), 0));
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
    let senders: Vec<PublicKey> = validator_keys(VALIDATORS)
        .iter()
        .map(Keypair::public_key)
        .chain([
            PublicKey([9; 32]),
            Keypair::from_seed(&[77; 32]).public_key(),
        ])
        .collect();
    check!()
        .with_test_time(TEST_TIME)
        .with_type::<Vec<(u8, u8, u16, u8, Vec<u8>)>>()
        .for_each(|inputs| {
            let keys = validator_keys(VALIDATORS);
            let mut replicas: Vec<Replica> = keys
                .into_iter()
                .take(2)
                .map(|key| Replica::new(config(), set(), key).expect("valid config"))
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
        let mut client = Client::new(chain(), Keypair::from_seed(&[5; 32]), set(), 1);
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
