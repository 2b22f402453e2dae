//! Gateway-attested requests (issue 14): what a validator takes, what it refuses, and what a
//! group of attested requests costs it in signature checks; and the gateway that attests.

use pbft_core::testing::{
    NOW, chain, client_key, drain, key_of, reply, small_config, validator_key, validator_set,
};
use pbft_core::{
    Batch, Client, Config, Error, Gateway, GatewayConfig, GatewayOutput, Keypair, Message, Output,
    PrePrepare, Replica, Request, Shed, attest, testing,
};

fn gateway_key() -> Keypair {
    Keypair::from_seed(&[0x6a; 32])
}

/// A config listing [`gateway_key`] as an attesting gateway.
fn attested_config() -> Config {
    let mut config = small_config();
    config.attesting_gateways = vec![gateway_key().public_key()];
    config
}

fn replica(index: usize, config: Config) -> Replica {
    Replica::new(config, validator_set(4), validator_key(index)).expect("a valid config")
}

/// `count` requests of distinct clients, attested together by `gateway`.
fn attested(gateway: &Keypair, count: usize) -> Vec<Request> {
    let requests = (0..count)
        .map(|i| {
            let op = format!("put k{i} v").into_bytes();
            (client_key(i).public_key(), 1, op)
        })
        .collect();
    attest(&chain(), gateway, requests)
}

fn propose(requests: Vec<Request>) -> Vec<u8> {
    let batch = Batch::of(requests);
    testing::pre_prepare(0, (0, 1), &batch)
}

/// Whether `outputs` hold the backup's prepare for seq 1.
fn prepared(outputs: &[Output]) -> bool {
    outputs.iter().any(|output| match output {
        Output::Send { bytes, .. } => matches!(
            Message::decode(bytes, 1 << 20),
            Ok(Message::Vote(vote)) if vote.seq == 1
        ),
        _ => false,
    })
}

#[test]
fn a_backup_checks_one_signature_for_a_group_a_gateway_attested() {
    let mut backup = replica(1, attested_config());
    let bytes = propose(attested(&gateway_key(), 16));
    backup.handle_message(NOW, &key_of(0), &bytes).unwrap();
    assert!(prepared(&drain(&mut backup)));
    // The primary's signature and the gateway's: two, not seventeen.
    assert_eq!(backup.metrics().signatures_verified, 2);
}

#[test]
fn end_to_end_validators_refuse_every_attested_request() {
    let mut backup = replica(1, small_config());
    let bytes = propose(attested(&gateway_key(), 4));
    assert_eq!(
        backup.handle_message(NOW, &key_of(0), &bytes),
        Err(Error::UnknownGateway)
    );
    assert!(!prepared(&drain(&mut backup)));
    let mut primary = replica(0, small_config());
    let request = attested(&gateway_key(), 1).remove(0);
    assert_eq!(primary.submit(NOW, request), Err(Error::UnknownGateway));
}

#[test]
fn a_gateway_not_listed_cannot_attest() {
    let stranger = Keypair::from_seed(&[0x99; 32]);
    let mut primary = replica(0, attested_config());
    let request = attested(&stranger, 1).remove(0);
    assert_eq!(primary.submit(NOW, request), Err(Error::UnknownGateway));
    let mut backup = replica(1, attested_config());
    let bytes = propose(attested(&stranger, 2));
    assert_eq!(
        backup.handle_message(NOW, &key_of(0), &bytes),
        Err(Error::UnknownGateway)
    );
}

#[test]
fn an_attestation_moved_to_another_request_or_path_does_not_verify() {
    // Another op under the group's signature and path.
    let mut requests = attested(&gateway_key(), 4);
    requests[2].op = b"put k2 forged".to_vec();
    let mut backup = replica(1, attested_config());
    let bytes = propose(requests);
    assert!(matches!(
        backup.handle_message(NOW, &key_of(0), &bytes),
        Err(Error::Crypto(_))
    ));
    assert!(!prepared(&drain(&mut backup)));
    // A request verified before, proposed again with another path: the cache keys on the
    // root the path leads to, so the copy misses and fails.
    let requests = attested(&gateway_key(), 4);
    let mut moved = requests[1].clone();
    if let Some(attestation) = moved.attestation.as_mut() {
        attestation.proof.index = 0;
    }
    let mut backup = replica(2, attested_config());
    backup.submit(NOW, requests[1].clone()).unwrap();
    // A copy with another path is not the watched one: refused unchecked.
    assert_eq!(
        backup.submit(NOW, moved.clone()),
        Err(Error::DuplicateRequest)
    );
    drain(&mut backup);
    assert!(matches!(
        backup.handle_message(NOW, &key_of(0), &propose(vec![moved])),
        Err(Error::Crypto(_))
    ));
    assert!(!prepared(&drain(&mut backup)));
}

#[test]
fn a_path_longer_than_any_tree_is_refused_before_hashing() {
    let mut request = attested(&gateway_key(), 1).remove(0);
    if let Some(attestation) = request.attestation.as_mut() {
        attestation.proof.path = vec![pbft_core::Digest([1; 32]); 33];
    }
    let mut primary = replica(0, attested_config());
    assert_eq!(primary.submit(NOW, request), Err(Error::BadAttestation));
}

#[test]
fn the_primary_proposes_attested_requests_with_one_check_per_group() {
    let mut primary = replica(0, attested_config());
    for request in attested(&gateway_key(), 8) {
        primary.submit(NOW, request).unwrap();
    }
    primary.handle_timeout(NOW + 10);
    let outputs = drain(&mut primary);
    let proposed: usize = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { bytes, .. } => match Message::decode(bytes, 1 << 20) {
                Ok(Message::PrePrepare(PrePrepare { batch, .. })) => Some(batch.requests.len()),
                _ => None,
            },
            _ => None,
        })
        .sum();
    assert_eq!(proposed, 8);
    assert_eq!(primary.metrics().signatures_verified, 1);
}

#[test]
fn listed_gateways_change_the_chain_id() {
    let plain = Config::new(chain());
    let attested = Config {
        attesting_gateways: vec![gateway_key().public_key()],
        ..plain.clone()
    };
    assert_ne!(
        pbft_core::ChainId::for_network("net", &plain),
        pbft_core::ChainId::for_network("net", &attested),
    );
    // The same gateways in another order are the same network.
    let other = Keypair::from_seed(&[0x6c; 32]).public_key();
    let both = Config {
        attesting_gateways: vec![gateway_key().public_key(), other],
        ..plain.clone()
    };
    let reversed = Config {
        attesting_gateways: vec![other, gateway_key().public_key()],
        ..plain.clone()
    };
    assert_eq!(
        pbft_core::ChainId::for_network("net", &both),
        pbft_core::ChainId::for_network("net", &reversed),
    );
}

fn gateway(attesting: bool) -> Gateway {
    let mut config = GatewayConfig::new(chain());
    config.max_batch_ops = 4;
    let gateway = Gateway::new(config, validator_set(4)).unwrap();
    match attesting {
        true => gateway.attesting(gateway_key()),
        false => gateway,
    }
}

/// The requests `gateway` sent to validators, in order.
fn sent(gateway: &mut Gateway) -> Vec<Request> {
    core::iter::from_fn(|| gateway.poll_output())
        .filter_map(|output| match output {
            GatewayOutput::Transmit { bytes, .. } => match Message::decode(&bytes, 1 << 20) {
                Ok(Message::Request(request)) => Some(request),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn an_attesting_gateway_signs_each_batch_once_and_its_requests_verify_at_validators() {
    let mut gateway = gateway(true);
    let mut clients = Vec::new();
    for i in 0..4 {
        let key = client_key(i).public_key();
        gateway.open(NOW, key).unwrap();
        gateway
            .submit_unsigned(NOW, &key, 7, format!("put k{i} v").into_bytes())
            .unwrap();
        clients.push(key);
    }
    let requests = sent(&mut gateway);
    assert_eq!(requests.len(), 4);
    assert_eq!(gateway.metrics().batches_attested, 1);
    assert_eq!(gateway.metrics().signatures_verified, 0);
    for (request, client) in requests.iter().zip(&clients) {
        assert_eq!(&request.client, client);
        let attestation = request.attestation.as_ref().expect("attested");
        assert_eq!(attestation.gateway, gateway_key().public_key());
    }
    let mut backup = replica(1, attested_config());
    backup
        .handle_message(NOW, &key_of(0), &propose(requests))
        .unwrap();
    assert!(prepared(&drain(&mut backup)));
}

#[test]
fn a_gateway_in_end_to_end_mode_refuses_unsigned_requests() {
    let mut gateway = gateway(false);
    let key = client_key(0).public_key();
    gateway.open(NOW, key).unwrap();
    assert_eq!(
        gateway.submit_unsigned(NOW, &key, 1, b"put k v".to_vec()),
        Err(Shed::NotAttesting)
    );
    assert_eq!(gateway.metrics().shed.get("not_attesting"), Some(&1));
}

#[test]
fn an_attested_request_answered_verifies_for_its_client() {
    let mut gateway = gateway(true);
    let key = client_key(0).public_key();
    gateway.open(NOW, key).unwrap();
    gateway
        .submit_unsigned(NOW, &key, 5, b"put k v".to_vec())
        .unwrap();
    gateway.handle_timeout(NOW + 10);
    let sent = sent(&mut gateway);
    assert_eq!(sent.len(), 1);
    let answered = [(key, 5, sent[0].digest(&chain()), &b"ok"[..])];
    for replica in 0..2 {
        let reply = Message::Reply(reply(replica, (0, 1), &answered, 0)).encode();
        gateway
            .handle_reply(pbft_core::ReplicaId(replica as u16), &reply)
            .unwrap();
    }
    let Some(GatewayOutput::Answered { replies, .. }) = gateway.poll_output() else {
        panic!("no answer");
    };
    let mut client = Client::new(chain(), client_key(0), validator_set(4), 5);
    client.track(NOW, sent[0].clone());
    let mut outcome = None;
    for reply in &replies {
        outcome = client
            .handle_reply(&Message::Reply(reply.clone()).encode())
            .unwrap()
            .or(outcome);
    }
    assert_eq!(outcome.map(|outcome| outcome.result), Some(b"ok".to_vec()));
}
