//! What a client (and a light client) can prove from a real cluster's output.

use pbft_core::testing::client_key;
use pbft_core::{
    CertificateError, Client, ClientError, Config, Error, Message, ReplicaId, ReplyCache, Request,
    verify_inclusion, verify_qc,
};
use pbft_sim::chain;
use pbft_sim::cluster::Cluster;

fn cluster() -> Cluster {
    Cluster::new(4, Config::new(chain()))
}

/// Client `index` of the shared fixtures, knowing the cluster's validators.
fn new_client(cluster: &Cluster, index: usize) -> Client {
    Client::new(chain(), client_key(index), cluster.set.clone(), 1)
}

/// Sends one request through the cluster and returns the replies the client received.
fn round_trip(cluster: &mut Cluster, client: &mut Client, op: &[u8]) -> (Request, Vec<Vec<u8>>) {
    let request = client.request(0, op.to_vec());
    cluster.submit(0, request.clone()).unwrap();
    cluster.run();
    (request.clone(), cluster.take_replies(&request.client))
}

#[test]
fn a_client_accepts_a_result_once_f_plus_one_validators_agree() {
    let mut cluster = cluster();
    let mut client = new_client(&cluster, 7);
    let (_, replies) = round_trip(&mut cluster, &mut client, b"hello");
    assert_eq!(replies.len(), 4, "every validator replies");
    assert_eq!(
        client.handle_reply(&replies[0]),
        Ok(None),
        "one reply is not enough with f = 1"
    );
    assert_eq!(
        client.handle_reply(&replies[0]),
        Ok(None),
        "the same validator twice counts once"
    );
    let outcome = client
        .handle_reply(&replies[1])
        .unwrap()
        .expect("f + 1 matching replies");
    assert_eq!(outcome.result, b"hello");
    assert_eq!(outcome.seq, 1);
    assert_eq!(
        client.handle_reply(&replies[2]),
        Err(ClientError::NotOutstanding)
    );
}

#[test]
fn a_client_refuses_forged_and_misdirected_replies() {
    let mut cluster = cluster();
    let mut client = new_client(&cluster, 7);
    let (request, replies) = round_trip(&mut cluster, &mut client, b"x");
    let Ok(Message::Reply(reply)) = Message::decode(&replies[0], 1 << 20) else {
        panic!("not a reply");
    };
    let mut forged = reply.clone();
    forged.result = b"y".to_vec();
    assert_eq!(
        client.handle_reply(&Message::Reply(forged).encode()),
        Err(ClientError::BadSignature)
    );
    let mut stranger = reply.clone();
    stranger.replica = ReplicaId(9);
    assert_eq!(
        client.handle_reply(&Message::Reply(stranger).encode()),
        Err(ClientError::UnknownReplica(ReplicaId(9)))
    );
    let mut other = new_client(&cluster, 8);
    other.request(0, b"z".to_vec());
    assert_eq!(
        other.handle_reply(&replies[0]),
        Err(ClientError::NotOutstanding)
    );
    assert_eq!(
        client.handle_reply(&Message::Request(request).encode()),
        Err(ClientError::NotAReply)
    );
    assert!(matches!(
        client.handle_reply(&[1, 0]),
        Err(ClientError::Decode(_))
    ));
}

#[test]
fn a_shared_reply_cache_skips_only_statements_already_checked() {
    let mut cluster = cluster();
    let mut client = new_client(&cluster, 7);
    let (_, replies) = round_trip(&mut cluster, &mut client, b"x");
    let mut cache = ReplyCache::new(16);
    assert_eq!(
        client.handle_reply_cached(&replies[0], &mut cache),
        Ok(None)
    );
    // Validator 0's signed root is now known. A reply whose result is altered leads to
    // another root: the cache does not vouch for it, and its signature fails.
    let Ok(Message::Reply(reply)) = Message::decode(&replies[0], 1 << 20) else {
        panic!("not a reply");
    };
    let mut forged = reply.clone();
    forged.result = b"y".to_vec();
    assert_eq!(
        client.handle_reply_cached(&Message::Reply(forged).encode(), &mut cache),
        Err(ClientError::BadSignature)
    );
    // The same statement claimed by another validator is checked against that validator.
    let mut borrowed = reply.clone();
    borrowed.replica = ReplicaId(1);
    assert_eq!(
        client.handle_reply_cached(&Message::Reply(borrowed).encode(), &mut cache),
        Err(ClientError::BadSignature)
    );
    let outcome = client
        .handle_reply_cached(&replies[1], &mut cache)
        .unwrap()
        .expect("f + 1 matching replies");
    assert_eq!(outcome.result, b"x");
}

#[test]
fn a_light_client_proves_its_request_committed_from_one_qc_and_a_merkle_proof() {
    let mut cluster = cluster();
    let mut clients: Vec<Client> = (10..16).map(|seed| new_client(&cluster, seed)).collect();
    // Six requests at once so they share batches.
    let requests: Vec<Request> = clients
        .iter_mut()
        .map(|c| c.request(0, b"op".to_vec()))
        .collect();
    for request in &requests {
        cluster.submit(0, request.clone()).unwrap();
    }
    cluster.run();
    for request in &requests {
        let (seq, (batch, qc)) = cluster
            .committed
            .iter()
            .find(|(_, (batch, _))| batch.requests.contains(request))
            .expect("every request committed");
        let index = batch.requests.iter().position(|r| r == request).unwrap();
        let proof = batch.prove(&chain(), index).unwrap();
        assert_eq!(qc.seq, *seq);
        assert_eq!(verify_qc(&chain(), &cluster.set, qc), Ok(()));
        assert_eq!(verify_inclusion(qc, request, &proof), Ok(()));
        let other = requests.iter().find(|r| !batch.requests.contains(r));
        if let Some(other) = other {
            assert_eq!(
                verify_inclusion(qc, other, &proof),
                Err(CertificateError::NotIncluded)
            );
        }
    }
}

#[test]
fn a_qc_that_is_short_repeated_foreign_or_for_another_digest_is_rejected() {
    let mut cluster = cluster();
    let mut client = new_client(&cluster, 7);
    round_trip(&mut cluster, &mut client, b"q");
    let (_, qc) = cluster.committed.get(&1).unwrap().clone();
    let set = cluster.set.clone();
    assert_eq!(verify_qc(&chain(), &set, &qc), Ok(()));

    let mut short = qc.clone();
    short.signatures.truncate(set.max_faulty());
    assert_eq!(
        verify_qc(&chain(), &set, &short),
        Err(CertificateError::TooFewSignatures { got: 1, needed: 3 })
    );

    let mut repeated = qc.clone();
    repeated.signatures[1] = repeated.signatures[0];
    assert!(matches!(
        verify_qc(&chain(), &set, &repeated),
        Err(CertificateError::DuplicateSigner(_))
    ));

    let mut foreign = qc.clone();
    foreign.signatures[2].0 = ReplicaId(9);
    assert_eq!(
        verify_qc(&chain(), &set, &foreign),
        Err(CertificateError::UnknownSigner(ReplicaId(9)))
    );

    let mut other_digest = qc.clone();
    other_digest.digest.0[0] ^= 1;
    assert_eq!(
        verify_qc(&chain(), &set, &other_digest),
        Err(CertificateError::BadSignature)
    );

    let mut other_seq = qc.clone();
    other_seq.seq += 1;
    assert_eq!(
        verify_qc(&chain(), &set, &other_seq),
        Err(CertificateError::BadSignature)
    );

    let other_chain = pbft_core::ChainId::from_name("elsewhere");
    assert_eq!(
        verify_qc(&other_chain, &set, &qc),
        Err(CertificateError::WrongChain)
    );

    let mut other_epoch = qc.clone();
    other_epoch.epoch = 1;
    assert!(matches!(
        verify_qc(&chain(), &set, &other_epoch),
        Err(CertificateError::WrongEpoch { .. })
    ));
}

#[test]
fn a_retransmitted_request_gets_the_cached_reply_and_never_runs_twice() {
    let mut cluster = cluster();
    let mut client = new_client(&cluster, 7);
    let (request, replies) = round_trip(&mut cluster, &mut client, b"once");
    assert_eq!(replies.len(), 4);
    let executed = cluster.replicas[0].metrics().requests_executed;
    let checks = |cluster: &Cluster| -> Vec<(u64, u64)> {
        let metrics = cluster.replicas.iter().map(|r| r.metrics());
        metrics
            .map(|m| (m.signatures_verified, m.signatures_cached))
            .collect()
    };
    let before = checks(&cluster);
    // The same request again, to every validator: each answers from its table, and checks
    // no signature, having verified this one (in its batch) before.
    for to in 0..4 {
        cluster.submit(to, request.clone()).unwrap();
    }
    cluster.run();
    let after: Vec<(u64, u64)> = before.iter().map(|&(v, c)| (v, c + 1)).collect();
    assert_eq!(checks(&cluster), after);
    // The same replies, byte for byte, in whatever order the replicas answer.
    let (mut first, mut again) = (replies.clone(), cluster.take_replies(&request.client));
    first.sort();
    again.sort();
    assert_eq!(again, first);
    assert_eq!(cluster.replicas[0].metrics().requests_executed, executed);
    // An older request of the same client is refused as stale.
    let next = client.request(0, b"twice".to_vec());
    cluster.submit(0, next).unwrap();
    cluster.run();
    let stale = Request::new(&chain(), &client_key(7), 1, b"old".to_vec());
    assert_eq!(cluster.submit(0, stale), Err(Error::StaleRequest));
}

#[test]
fn a_matching_reply_reuses_the_proven_root_but_not_the_signature_check() {
    let mut cluster = cluster();
    let mut client = new_client(&cluster, 7);
    let (_, replies) = round_trip(&mut cluster, &mut client, b"x");
    assert_eq!(client.handle_reply(&replies[0]), Ok(None));
    let Ok(Message::Reply(second)) = Message::decode(&replies[1], 1 << 20) else {
        panic!("not a reply");
    };
    // Validator 0's result and path, now proven, under validator 1's name: the root is
    // known, and validator 1 never signed it with that signature.
    let mut unsigned = second.clone();
    unsigned.signature = pbft_core::Signature([7; 64]);
    assert_eq!(
        client.handle_reply(&Message::Reply(unsigned).encode()),
        Err(ClientError::BadSignature)
    );
    // Another path with the same result is not the proven one: its root is computed.
    let mut rerouted = second.clone();
    if let Some(sibling) = rerouted.proof.path.first_mut() {
        sibling.0[0] ^= 1;
    } else {
        rerouted.proof.count += 1;
    }
    assert_eq!(
        client.handle_reply(&Message::Reply(rerouted).encode()),
        Err(ClientError::BadSignature)
    );
    let outcome = client
        .handle_reply(&replies[1])
        .unwrap()
        .expect("f + 1 matching replies");
    assert_eq!(outcome.result, b"x");
}

/// A client whose clock went back reuses its key under spent numbers: every validator
/// refuses it with a signed reason, the client accepts the refusal once f + 1 agree (a
/// Byzantine refuser can neither forge one nor push its numbering higher than honest ones
/// do), renumbers above the spent numbers, and the request then executes.
#[test]
fn a_client_behind_its_spent_numbers_is_told_and_renumbers() {
    use pbft_core::testing::validator_key;
    use pbft_core::{Answer, RefusalReason, Refused, RequestRefusal};
    let mut cluster = cluster();
    let mut ahead = Client::new(chain(), client_key(0), cluster.set.clone(), 1_000);
    let (_, replies) = round_trip(&mut cluster, &mut ahead, b"put");
    assert!(
        replies
            .iter()
            .any(|r| matches!(ahead.handle_reply(r), Ok(Some(_))))
    );

    let mut behind = new_client(&cluster, 0);
    let request = behind.request(0, b"put again".to_vec());
    for to in 0..4 {
        let _ = cluster.submit(to, request.clone());
    }
    cluster.run();
    let refusals = cluster.take_replies(&request.client);
    assert_eq!(refusals.len(), 4, "every validator answers");

    // A forged refusal (another reason under an honest signature) does not count.
    let Ok(Message::Refusal(honest)) = Message::decode(&refusals[0], usize::MAX) else {
        panic!("a refusal");
    };
    let mut forged = honest.clone();
    forged.reason = RefusalReason::NumberTaken;
    assert_eq!(
        behind.handle_message(&Message::Refusal(forged).encode()),
        Err(ClientError::BadSignature)
    );
    // A Byzantine validator claims the key spent far ahead: one refusal is not enough, and
    // with an honest one the client numbers above what f + 1 hold spent, not above the lie.
    let lie = RequestRefusal::new(
        (&chain(), 0),
        (request.client, request.client_seq, request.digest(&chain())),
        RefusalReason::Stale {
            last: u64::MAX - 10,
        },
        ReplicaId(3),
        &validator_key(3),
    );
    assert_eq!(
        behind.handle_message(&Message::Refusal(lie).encode()),
        Ok(None)
    );
    let answer = refusals
        .iter()
        .filter(|bytes| {
            !matches!(Message::decode(bytes, usize::MAX), Ok(Message::Refusal(r)) if r.replica == ReplicaId(3))
        })
        .find_map(|bytes| behind.handle_message(bytes).ok().flatten());
    assert_eq!(
        answer,
        Some(Answer::Refused(Refused {
            client_seq: 1,
            reason: RefusalReason::Stale { last: 1_000 },
        }))
    );

    let renumbered = behind.renumber_above(0, 1_000).expect("outstanding");
    assert_eq!(
        (renumbered.client_seq, &renumbered.op[..]),
        (1_001, &b"put again"[..])
    );
    cluster.submit(0, renumbered.clone()).unwrap();
    cluster.run();
    let executed = cluster
        .take_replies(&renumbered.client)
        .iter()
        .find_map(|bytes| behind.handle_message(bytes).ok().flatten());
    assert!(
        matches!(executed, Some(Answer::Executed(ref outcome)) if outcome.client_seq == 1_001),
        "{executed:?}"
    );
}
