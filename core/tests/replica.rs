//! Each check a validator makes on its inputs, and the typed error it answers with.

use pbft_core::testing::{
    NOW, batch, chain, client_key, drain, key_of, pre_prepare, request, small_config,
    validator_key, validator_set, vote,
};
use pbft_core::{
    Batch, Config, DecodeError, Destination, Error, Message, Output, PROTOCOL_VERSION, Phase,
    PrePrepare, PublicKey, Record, Replica, ReplicaId, Request, Vote,
};

fn config() -> Config {
    let mut config = small_config();
    config.max_future_per_peer = 3;
    config.max_request_bytes = 64;
    config
}

fn replica(index: usize) -> Replica {
    pbft_core::testing::replica(index, config())
}

#[test]
fn backup_persists_its_prepare_before_sending_it() {
    let mut backup = replica(1);
    let bytes = pre_prepare(0, (0, 1), &batch(&[1]));
    backup.handle_message(NOW, &key_of(0), &bytes).unwrap();
    let outputs = drain(&mut backup);
    let persisted = outputs
        .iter()
        .position(|o| matches!(o, Output::Persist(Record::Signed(v)) if v.phase == Phase::Prepare));
    let sent = outputs.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                to: Destination::AllValidators,
                ..
            }
        )
    });
    assert!(persisted.is_some() && sent.is_some());
    assert!(
        persisted < sent,
        "persist comes before the send that carries the signature"
    );
}

#[test]
fn primary_batches_requests_and_persists_before_proposing() {
    let mut primary = replica(0);
    primary.submit(NOW, request(1)).unwrap();
    let outputs = drain(&mut primary);
    assert!(
        matches!(&outputs[0], Output::Persist(Record::Accepted(v, b)) if v.phase == Phase::PrePrepare && v.seq == 1 && *b == batch(&[1]))
    );
    let Output::Send {
        to: Destination::AllValidators,
        bytes,
    } = &outputs[1]
    else {
        panic!("expected the pre-prepare broadcast, got {outputs:?}");
    };
    let Ok(Message::PrePrepare(proposal)) = Message::decode(bytes, 1 << 20) else {
        panic!("not a pre-prepare");
    };
    assert_eq!(proposal.batch, batch(&[1]));
    // While seq 1 is in flight, later requests wait for the batch delay.
    primary.submit(NOW, request(2)).unwrap();
    assert!(drain(&mut primary).is_empty());
    assert_eq!(primary.poll_timeout(), Some(NOW + config().batch_delay_ms));
    primary.handle_timeout(NOW + config().batch_delay_ms);
    assert!(
        matches!(&drain(&mut primary)[0], Output::Persist(Record::Accepted(v, _)) if v.seq == 2)
    );
}

#[test]
fn undecodable_bytes_are_typed_errors() {
    let mut backup = replica(1);
    let from = key_of(0);
    assert_eq!(
        backup.handle_message(NOW, &from, &[]),
        Err(Error::Decode(DecodeError::Empty))
    );
    assert_eq!(
        backup.handle_message(NOW, &from, &[9, 1, 2]),
        Err(Error::Decode(DecodeError::UnsupportedVersion(9)))
    );
    assert_eq!(
        backup.handle_message(NOW, &from, &[PROTOCOL_VERSION, 0xff, 0xff]),
        Err(Error::Decode(DecodeError::Malformed))
    );
    let huge = vec![1u8; config().max_message_bytes + 1];
    assert!(matches!(
        backup.handle_message(NOW, &from, &huge),
        Err(Error::Decode(DecodeError::TooLarge { .. }))
    ));
    assert_eq!(backup.metrics().rejected.get("decode"), Some(&4));
}

#[test]
fn consensus_messages_from_non_validators_are_refused() {
    let mut backup = replica(1);
    let stranger = client_key(0).public_key();
    let bytes = pre_prepare(0, (0, 1), &batch(&[1]));
    assert_eq!(
        backup.handle_message(NOW, &stranger, &bytes),
        Err(Error::NotAValidator)
    );
    let prepare = Message::Vote(vote(2, Phase::Prepare, (0, 1), &batch(&[1]))).encode();
    assert_eq!(
        backup.handle_message(NOW, &stranger, &prepare),
        Err(Error::NotAValidator)
    );
}

#[test]
fn a_pre_prepare_must_come_from_the_primary_with_its_signature() {
    let mut backup = replica(1);
    let from = key_of(2);
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(2, (0, 1), &batch(&[1]))),
        Err(Error::WrongSigner(ReplicaId(2)))
    );
    // Claims to be the primary, signed by validator 2.
    let b = batch(&[1]);
    let mut forged = Vote::new(
        &chain(),
        0,
        Phase::PrePrepare,
        (0, 1),
        b.digest(&chain()),
        ReplicaId(0),
        &validator_key(2),
    );
    forged.replica = ReplicaId(0);
    let bytes = Message::PrePrepare(PrePrepare {
        vote: forged,
        batch: b,
    })
    .encode();
    assert_eq!(
        backup.handle_message(NOW, &from, &bytes),
        Err(Error::Crypto(pbft_core::CryptoError::BadSignature))
    );
}

#[test]
fn views_and_windows_are_enforced() {
    let mut backup = replica(1);
    let from = key_of(0);
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(1, (1, 1), &batch(&[1]))),
        Err(Error::FutureView { got: 1, current: 0 })
    );
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(0, (0, 0), &batch(&[1]))),
        Err(Error::OutOfWindow {
            seq: 0,
            low: 1,
            high: 4
        })
    );
    // Above the window: buffered up to the per-peer bound, then refused.
    for seq in 5..8 {
        assert_eq!(
            backup.handle_message(NOW, &from, &pre_prepare(0, (0, seq), &batch(&[seq]))),
            Ok(())
        );
    }
    let before = backup.memory_footprint();
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(0, (0, 8), &batch(&[8]))),
        Err(Error::FutureBufferFull)
    );
    assert_eq!(
        backup.memory_footprint(),
        before,
        "a refused message holds no memory"
    );
}

#[test]
fn batches_are_checked_request_by_request() {
    let from = key_of(0);
    // Each on a backup of its own: a second proposal for a slot would be equivocation.
    let refused = |bytes: &[u8]| {
        let mut backup = replica(1);
        let verdict = backup.handle_message(NOW, &from, bytes);
        assert_eq!(backup.metrics().rejected.values().sum::<u64>(), 1);
        verdict
    };
    // The digest must be the Merkle root of the batch.
    let swapped = Message::PrePrepare(PrePrepare {
        vote: vote(0, Phase::PrePrepare, (0, 1), &batch(&[1])),
        batch: batch(&[2]),
    })
    .encode();
    assert_eq!(refused(&swapped), Err(Error::BatchDigestMismatch));
    // Every client signature is checked.
    let mut forged = batch(&[1]);
    forged.requests[0].signature.0[0] ^= 1;
    assert_eq!(
        refused(&pre_prepare(0, (0, 1), &forged)),
        Err(Error::Crypto(pbft_core::CryptoError::BadSignature))
    );
    // No request twice, no empty batch, no oversized operation.
    assert_eq!(
        refused(&pre_prepare(0, (0, 1), &batch(&[1, 1]))),
        Err(Error::DuplicateRequest)
    );
    assert_eq!(
        refused(&pre_prepare(0, (0, 1), &batch(&[]))),
        Err(Error::BatchTooLarge)
    );
    let big = Batch::of(vec![Request::new(&chain(), &client_key(0), 1, vec![0; 65])]);
    assert_eq!(
        refused(&pre_prepare(0, (0, 1), &big)),
        Err(Error::RequestTooLarge { len: 65, max: 64 })
    );
    // A request already proposed at another seq cannot be proposed again.
    let mut backup = replica(1);
    backup
        .handle_message(NOW, &from, &pre_prepare(0, (0, 1), &batch(&[1])))
        .unwrap();
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(0, (0, 2), &batch(&[1, 2]))),
        Err(Error::DuplicateRequest)
    );
    assert_eq!(backup.metrics().rejected.values().sum::<u64>(), 1);
}

#[test]
fn a_batch_over_the_byte_limit_is_refused() {
    let mut config = config();
    config.max_batch_bytes = 430;
    let mut backup = Replica::new(config, validator_set(4), validator_key(1)).unwrap();
    // Four requests of 120 accounted bytes each exceed 430; three fit. (With the limit plus
    // one request of slack, as before, four would have passed.)
    assert_eq!(
        backup.handle_message(
            NOW,
            &key_of(0),
            &pre_prepare(0, (0, 1), &batch(&[1, 2, 3, 4]))
        ),
        Err(Error::BatchTooLarge)
    );
    assert_eq!(
        backup.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &batch(&[1, 2, 3]))),
        Ok(())
    );
}

#[test]
fn a_second_proposal_for_a_slot_is_evidence_against_the_primary() {
    let mut backup = replica(1);
    let from = key_of(0);
    backup
        .handle_message(NOW, &from, &pre_prepare(0, (0, 1), &batch(&[1])))
        .unwrap();
    drain(&mut backup);
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(0, (0, 1), &batch(&[1]))),
        Err(Error::Duplicate)
    );
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(0, (0, 1), &batch(&[2]))),
        Err(Error::Equivocation(ReplicaId(0)))
    );
    let outputs = drain(&mut backup);
    let [
        Output::Persist(Record::Evidence(_)),
        Output::Send { .. },
        Output::Evidence(evidence),
    ] = outputs.as_slice()
    else {
        panic!("expected the evidence logged, forwarded and reported, got {outputs:?}");
    };
    assert_eq!(
        pbft_core::verify_evidence(&chain(), &validator_set(4), evidence),
        Ok(())
    );
    // Reported once, however often it is repeated.
    let _ = backup.handle_message(NOW, &from, &pre_prepare(0, (0, 1), &batch(&[3])));
    assert!(drain(&mut backup).is_empty());
}

#[test]
fn conflicting_votes_are_evidence_and_the_first_vote_stands() {
    let mut backup = replica(1);
    let from = key_of(2);
    let first = Message::Vote(vote(2, Phase::Commit, (0, 1), &batch(&[1]))).encode();
    let second = Message::Vote(vote(2, Phase::Commit, (0, 1), &batch(&[2]))).encode();
    backup.handle_message(NOW, &from, &first).unwrap();
    assert_eq!(
        backup.handle_message(NOW, &from, &first),
        Err(Error::Duplicate)
    );
    assert_eq!(
        backup.handle_message(NOW, &from, &second),
        Err(Error::Equivocation(ReplicaId(2)))
    );
    assert!(matches!(
        drain(&mut backup).as_slice(),
        [
            Output::Persist(Record::Evidence(_)),
            Output::Send { .. },
            Output::Evidence(_)
        ]
    ));
}

#[test]
fn votes_that_cannot_travel_alone_or_come_from_the_wrong_role_are_refused() {
    let mut backup = replica(1);
    let b = batch(&[1]);
    let from = key_of(0);
    let prepare_by_primary = Message::Vote(vote(0, Phase::Prepare, (0, 1), &b)).encode();
    assert_eq!(
        backup.handle_message(NOW, &from, &prepare_by_primary),
        Err(Error::WrongSigner(ReplicaId(0)))
    );
    let bare = Message::Vote(vote(0, Phase::PrePrepare, (0, 1), &b)).encode();
    assert!(matches!(
        backup.handle_message(NOW, &from, &bare),
        Err(Error::UnexpectedMessage(_))
    ));
    let mut bad = vote(2, Phase::Prepare, (0, 1), &b);
    bad.signature.0[10] ^= 1;
    assert_eq!(
        backup.handle_message(NOW, &key_of(2), &Message::Vote(bad).encode()),
        Err(Error::Crypto(pbft_core::CryptoError::BadSignature))
    );
    // A vote naming a signer other than its sender (here one outside the set) is refused
    // before anything else is looked at.
    let mut unknown = vote(2, Phase::Prepare, (0, 1), &b);
    unknown.replica = ReplicaId(9);
    assert_eq!(
        backup.handle_message(NOW, &key_of(2), &Message::Vote(unknown).encode()),
        Err(Error::WrongSigner(ReplicaId(9)))
    );
}

#[test]
fn requests_are_checked_before_they_cost_anything() {
    let mut primary = replica(0);
    let from = client_key(0).public_key();
    let mut forged = request(1);
    forged.signature.0[3] ^= 1;
    // The primary checks client signatures in a batch when it proposes: a forged request is
    // dropped there, counted, and never proposed; the genuine one can follow.
    primary
        .handle_message(NOW, &from, &Message::Request(forged).encode())
        .unwrap();
    let proposed = drain(&mut primary)
        .iter()
        .any(|output| matches!(output, Output::Send { .. } | Output::Persist(_)));
    assert!(!proposed, "a forged request was proposed");
    assert_eq!(primary.metrics().rejected.get("bad_signature"), Some(&1));
    let big = Request::new(&chain(), &client_key(0), 1, vec![0; 65]);
    assert_eq!(
        primary.submit(NOW, big),
        Err(Error::RequestTooLarge { len: 65, max: 64 })
    );
    primary.submit(NOW, request(1)).unwrap();
    assert_eq!(
        primary.submit(NOW, request(1)),
        Err(Error::DuplicateRequest)
    );
    let mut stranger_key = request(2);
    stranger_key.client = PublicKey([0; 32]);
    assert!(matches!(
        primary.submit(NOW, stranger_key),
        Err(Error::Crypto(_))
    ));
}

#[test]
fn a_backup_forwards_client_requests_to_the_primary() {
    let mut backup = replica(2);
    backup.submit(NOW, request(1)).unwrap();
    assert!(matches!(
        drain(&mut backup).as_slice(),
        [Output::Send {
            to: Destination::Validator(ReplicaId(0)),
            ..
        }]
    ));
}

#[test]
fn replies_are_not_for_validators_and_execution_follows_delivery() {
    let mut backup = replica(1);
    let reply = pbft_core::Reply {
        view: 0,
        seq: 1,
        client: client_key(0).public_key(),
        client_seq: 1,
        request: pbft_core::Digest([0; 32]),
        result: vec![],
        proof: pbft_core::InclusionProof {
            index: 0,
            count: 1,
            path: vec![],
        },
        replica: ReplicaId(2),
        signature: pbft_core::Signature([0; 64]),
    };
    assert_eq!(
        backup.handle_message(NOW, &key_of(2), &Message::Reply(reply).encode()),
        Err(Error::UnexpectedMessage("reply"))
    );
    assert!(matches!(
        backup.executed(NOW, 1, vec![], None),
        Err(Error::HostContract(_))
    ));
}

#[test]
fn a_replica_whose_key_is_not_in_the_set_does_not_start() {
    assert!(Replica::new(config(), validator_set(4), client_key(0)).is_err());
    let mut bad = config();
    bad.window = 0;
    assert!(Replica::new(bad, validator_set(4), validator_key(0)).is_err());
}

#[test]
fn a_config_without_a_chain_id_or_with_a_zero_bound_is_refused() {
    let unset = Config {
        chain_id: Config::default().chain_id,
        ..config()
    };
    let err = Replica::new(unset, validator_set(4), validator_key(0)).map(|_| ());
    assert!(
        matches!(err, Err(pbft_core::ConfigError::Invalid(why)) if why.contains("chain_id")),
        "{err:?}"
    );
    let mut no_buffer = config();
    no_buffer.max_future_per_peer = 0;
    assert!(Replica::new(no_buffer, validator_set(4), validator_key(0)).is_err());
    // A request as large as allowed must fit a batch with its key, signature and numbers.
    let mut tight = config();
    tight.max_batch_bytes = tight.max_request_bytes + 116;
    assert!(Replica::new(tight.clone(), validator_set(4), validator_key(0)).is_err());
    tight.max_batch_bytes += 1;
    assert!(Replica::new(tight, validator_set(4), validator_key(0)).is_ok());
}

#[test]
fn the_chain_id_commits_to_the_parameters_validators_must_share() {
    use pbft_core::ChainId;
    let defaults = Config::default();
    assert_eq!(
        ChainId::for_network("net", &defaults),
        ChainId::from_name("net")
    );
    let agreed: [fn(&mut Config); 9] = [
        |c| c.checkpoint_interval += 1,
        |c| c.snapshot_chunk_bytes += 1,
        |c| c.max_clients += 1,
        |c| c.max_batch_ops += 1,
        |c| c.max_batch_bytes += 1,
        |c| c.max_request_bytes += 1,
        |c| c.window += 1,
        |c| c.max_message_bytes += 1,
        |c| c.max_snapshot_bytes += 1,
    ];
    let mut seen = vec![ChainId::from_name("net")];
    for change in agreed {
        let mut changed = Config::default();
        change(&mut changed);
        let id = ChainId::for_network("net", &changed);
        assert!(!seen.contains(&id), "each agreed parameter moves the id");
        seen.push(id);
    }
    let own = Config {
        view_timeout_ms: 900,
        heartbeat_ms: 10,
        max_pending_requests: 7,
        retained_batches: 999,
        ..Config::default()
    };
    assert_eq!(ChainId::for_network("net", &own), ChainId::from_name("net"));
}
