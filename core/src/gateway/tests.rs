//! Unit tests of the gateway: batching, routing, fail-over, reply counting and every refusal.

use alloc::format;
use alloc::vec;

use super::*;
use crate::client::Client;
use crate::testing::{self, Answered, chain, client_key, validator_set};

fn config() -> GatewayConfig {
    let mut config = GatewayConfig::new(chain());
    config.max_batch_ops = 3;
    config.batch_delay_ms = 2;
    config
}

fn gateway(config: GatewayConfig) -> Gateway {
    Gateway::new(config, validator_set(4)).expect("a valid config")
}

fn request(client: usize, client_seq: u64) -> Request {
    Request::new(
        &chain(),
        &client_key(client),
        client_seq,
        format!("op {client_seq}").into_bytes(),
    )
}

/// Client `client`'s request `client_seq` ([`request`]) got `result`: a row of [`Answered`].
fn row(client: usize, client_seq: u64, result: &[u8]) -> (PublicKey, u64, Digest, &[u8]) {
    let key = client_key(client).public_key();
    (
        key,
        client_seq,
        request(client, client_seq).digest(&chain()),
        result,
    )
}

fn outputs(gateway: &mut Gateway) -> Vec<GatewayOutput> {
    core::iter::from_fn(|| gateway.poll_output()).collect()
}

/// The validators each output was sent to, in order.
fn sent_to(outputs: &[GatewayOutput]) -> Vec<u16> {
    outputs
        .iter()
        .filter_map(|output| match output {
            GatewayOutput::Transmit { to, .. } => Some(to.0),
            _ => None,
        })
        .collect()
}

/// Validator `replica`'s encoded reply in `view` at `seq` to request `index` of a batch
/// whose requests got `answered`.
fn reply(replica: usize, view: u64, seq: u64, answered: &Answered, index: usize) -> Vec<u8> {
    Message::Reply(testing::reply(replica, (view, seq), answered, index)).encode()
}

#[test]
fn a_batch_goes_to_the_primary_when_full_or_when_its_delay_runs_out() {
    let mut gateway = gateway(config());
    for client in 0..4 {
        gateway.open(0, client_key(client).public_key()).unwrap();
    }
    for client in 0..2 {
        gateway
            .submit(0, &client_key(client).public_key(), request(client, 1))
            .unwrap();
    }
    assert!(outputs(&mut gateway).is_empty(), "two of three wait");
    assert_eq!(gateway.poll_timeout(), Some(2), "until the batch delay");
    gateway
        .submit(1, &client_key(2).public_key(), request(2, 1))
        .unwrap();
    assert_eq!(
        sent_to(&outputs(&mut gateway)),
        vec![0, 0, 0],
        "full: to the primary"
    );
    gateway
        .submit(10, &client_key(3).public_key(), request(3, 1))
        .unwrap();
    assert_eq!(gateway.poll_timeout(), Some(12));
    gateway.handle_timeout(11);
    assert!(outputs(&mut gateway).is_empty());
    gateway.handle_timeout(12);
    assert_eq!(sent_to(&outputs(&mut gateway)), vec![0]);
    assert_eq!(gateway.metrics().batches_sent, 2);
    assert_eq!(gateway.metrics().requests_sent, 4);
}

#[test]
fn f_plus_one_matching_replies_answer_and_each_verifies_for_the_client() {
    let mut gateway = gateway(config());
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    let sent = request(0, 7);
    gateway.submit(0, &key, sent.clone()).unwrap();
    gateway.handle_timeout(2);
    outputs(&mut gateway);
    let honest: &Answered = &[row(1, 3, b"theirs"), row(0, 7, b"ok")];
    let lying: &Answered = &[row(0, 7, b"forged result")];
    // Validator 1 signs a false result: it counts for nothing until f + 1 agree with it.
    gateway
        .handle_reply(ReplicaId(1), &reply(1, 4, 9, lying, 0))
        .unwrap();
    gateway
        .handle_reply(ReplicaId(2), &reply(2, 4, 9, honest, 1))
        .unwrap();
    assert!(
        outputs(&mut gateway).is_empty(),
        "one lie and one truth decide nothing"
    );
    // A second reply from validator 2 is not counted twice.
    gateway
        .handle_reply(ReplicaId(2), &reply(2, 4, 9, honest, 1))
        .unwrap();
    assert!(outputs(&mut gateway).is_empty());
    // Validator 3 committed the same batch in another view: its reply still matches.
    gateway
        .handle_reply(ReplicaId(3), &reply(3, 5, 9, honest, 1))
        .unwrap();
    let answered = outputs(&mut gateway);
    let [
        GatewayOutput::Answered {
            client,
            client_seq: 7,
            seq: 9,
            replies,
            chain: handed,
        },
    ] = &answered[..]
    else {
        panic!("one answer, got {answered:?}");
    };
    assert_eq!(*client, key);
    assert!(handed.is_empty(), "no epoch changed");
    let signers: Vec<u16> = replies.iter().map(|r| r.replica.0).collect();
    assert_eq!(signers, vec![2, 3]);
    let mut verifier = Client::new(chain(), client_key(0), validator_set(4), 1);
    verifier.track(0, sent);
    let outcomes: Vec<_> = replies
        .iter()
        .map(|r| {
            verifier
                .handle_reply(&Message::Reply(r.clone()).encode())
                .unwrap()
        })
        .collect();
    assert_eq!(outcomes[0], None);
    assert_eq!(
        outcomes[1].as_ref().map(|o| o.result.as_slice()),
        Some(&b"ok"[..])
    );
    assert_eq!(gateway.outstanding(), 0);
    assert_eq!(
        gateway.primary(),
        ReplicaId(0),
        "views 4, 4 and 5: the second highest (f + 1 = 2) is 4"
    );
    assert_eq!(gateway.poll_timeout(), None, "nothing left to retransmit");
    assert_eq!(
        gateway.handle_reply(ReplicaId(0), &reply(0, 4, 9, honest, 1)),
        Err(ClientError::NotOutstanding)
    );
}

#[test]
fn replies_that_do_not_prove_themselves_are_refused_and_counted() {
    let mut gateway = gateway(config());
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    gateway.submit(0, &key, request(0, 1)).unwrap();
    gateway.handle_timeout(2);
    let answered: &Answered = &[row(0, 1, b"ok")];
    let mut forged = reply(1, 0, 1, answered, 0);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(
        gateway.handle_reply(ReplicaId(1), &forged).is_err(),
        "a bit of the signature flipped"
    );
    assert!(matches!(
        gateway.handle_reply(ReplicaId(1), b"junk"),
        Err(ClientError::Decode(_))
    ));
    let not_a_reply = Message::Request(request(0, 1)).encode();
    assert_eq!(
        gateway.handle_reply(ReplicaId(1), &not_a_reply),
        Err(ClientError::NotAReply)
    );
    assert_eq!(
        gateway.handle_reply(ReplicaId(9), &reply(9, 0, 1, answered, 0)),
        Err(ClientError::UnknownReplica(ReplicaId(9)))
    );
    assert_eq!(
        gateway.handle_reply(ReplicaId(1), &reply(2, 0, 1, answered, 0)),
        Err(ClientError::NotFromSigner {
            claimed: ReplicaId(2),
            from: ReplicaId(1)
        }),
        "validator 1 cannot hand in validator 2's vote"
    );
    assert_eq!(gateway.metrics().replies_rejected, 5);
    assert_eq!(gateway.outstanding(), 1);
}

#[test]
fn late_replies_send_the_request_to_every_validator_with_backoff_until_it_times_out() {
    let mut config = config();
    config.retransmit_ms = 100;
    config.request_timeout_ms = 1_000;
    let mut gateway = gateway(config);
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    gateway.submit(0, &key, request(0, 1)).unwrap();
    gateway.handle_timeout(2);
    assert_eq!(sent_to(&outputs(&mut gateway)), vec![0]);
    let mut at = Vec::new();
    while let Some(next) = gateway.poll_timeout() {
        gateway.handle_timeout(next);
        let out = outputs(&mut gateway);
        if let [GatewayOutput::Refused { reason, .. }] = &out[..] {
            assert_eq!(*reason, Shed::TimedOut);
            at.push((next, 0));
            continue;
        }
        assert_eq!(sent_to(&out), vec![0, 1, 2, 3], "to every validator");
        at.push((next, out.len()));
    }
    // Sent at 2; the deadlines double: +100, +200, +400, +800 (capped at 8x) ...
    assert_eq!(at, vec![(102, 4), (302, 4), (702, 4), (1502, 0)]);
    assert_eq!(gateway.metrics().retransmissions, 3);
    assert_eq!(gateway.metrics().shed.get("timed_out"), Some(&1));
    assert_eq!(gateway.outstanding(), 0);
    gateway.submit(1_600, &key, request(0, 1)).unwrap();
}

#[test]
fn a_forged_request_is_refused_and_the_rest_of_its_batch_goes_on() {
    let mut gateway = gateway(config());
    for client in 0..3 {
        gateway.open(0, client_key(client).public_key()).unwrap();
    }
    let mut forged = request(1, 1);
    forged.signature = request(1, 2).signature;
    gateway
        .submit(0, &client_key(0).public_key(), request(0, 1))
        .unwrap();
    gateway
        .submit(0, &client_key(1).public_key(), forged)
        .unwrap();
    gateway
        .submit(0, &client_key(2).public_key(), request(2, 1))
        .unwrap();
    let out = outputs(&mut gateway);
    assert_eq!(sent_to(&out), vec![0, 0]);
    assert!(out.contains(&GatewayOutput::Refused {
        client: client_key(1).public_key(),
        client_seq: 1,
        reason: Shed::BadSignature,
    }));
    assert_eq!(gateway.metrics().shed.get("bad_signature"), Some(&1));
    assert_eq!(gateway.outstanding(), 2);
}

#[test]
fn every_refusal_says_why_and_is_counted() {
    let mut config = config();
    config.max_sessions = 2;
    config.client_burst = 3;
    config.client_rate = 1_000;
    config.max_outstanding_per_client = 2;
    config.max_outstanding = 3;
    config.max_request_bytes = 8;
    config.max_batch_ops = 100;
    let mut gateway = gateway(config);
    let (a, b) = (client_key(0).public_key(), client_key(1).public_key());
    let stranger = client_key(2).public_key();
    assert_eq!(gateway.submit(0, &a, request(0, 1)), Err(Shed::NoSession));
    gateway.open(0, a).unwrap();
    gateway.open(0, b).unwrap();
    assert_eq!(gateway.open(0, stranger), Err(Shed::SessionsFull));
    gateway.close(&b);
    assert_eq!(gateway.open(0, PublicKey([0; 32])), Err(Shed::BadKey));
    gateway.open(0, b).unwrap();
    assert_eq!(gateway.submit(0, &a, request(1, 1)), Err(Shed::WrongClient));
    let large = Request::new(&chain(), &client_key(0), 1, vec![0; 9]);
    assert_eq!(
        gateway.submit(0, &a, large),
        Err(Shed::TooLarge { len: 9, max: 8 })
    );
    gateway.submit(0, &a, request(0, 1)).unwrap();
    assert_eq!(
        gateway.submit(0, &a, request(0, 2)),
        Err(Shed::RateLimited),
        "3 tokens spent"
    );
    assert_eq!(gateway.submit(1, &a, request(0, 1)), Err(Shed::Duplicate));
    gateway.submit(2, &a, request(0, 2)).unwrap();
    assert_eq!(gateway.submit(3, &a, request(0, 3)), Err(Shed::ClientBusy));
    gateway.submit(5, &b, request(1, 1)).unwrap();
    assert_eq!(gateway.submit(6, &b, request(1, 2)), Err(Shed::Overloaded));
    let shed = &gateway.metrics().shed;
    for label in [
        "no_session",
        "sessions_full",
        "bad_key",
        "wrong_client",
        "too_large",
        "rate_limited",
        "duplicate",
        "client_busy",
        "overloaded",
    ] {
        assert_eq!(shed.get(label), Some(&1), "{label}");
    }
    assert_eq!(gateway.metrics().requests_accepted, 3);
}

#[test]
fn a_flood_over_the_rate_is_shed_without_a_signature_check() {
    let mut config = config();
    config.client_rate = 100;
    config.client_burst = 10;
    config.max_outstanding_per_client = 1_000;
    config.max_batch_ops = 1_000;
    let mut gateway = gateway(config);
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    let mut forged = request(0, 1);
    forged.signature = Signature([7; 64]);
    // 50,000 requests a second for one second: 10 at once, then one every 10 ms.
    let mut accepted = 0;
    for i in 0..50_000u64 {
        let mut copy = forged.clone();
        copy.client_seq = i + 1;
        accepted += u64::from(gateway.submit(i / 50, &key, copy).is_ok());
    }
    assert_eq!(accepted, 10 + 99);
    assert_eq!(
        gateway.metrics().shed.get("rate_limited"),
        Some(&(50_000 - 109))
    );
    gateway.handle_timeout(10_000);
    assert!(
        sent_to(&outputs(&mut gateway)).is_empty(),
        "no forgery reaches a validator"
    );
    // A batch of forgeries costs its bisection: under 2.5 batched and one lone check each.
    let checked = gateway.metrics().signatures_verified;
    assert!((109..=109 * 9 / 2).contains(&checked), "{checked} checks");
}

#[test]
fn closing_a_session_forgets_its_requests() {
    let mut gateway = gateway(config());
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    gateway.submit(0, &key, request(0, 1)).unwrap();
    gateway.handle_timeout(2);
    gateway.submit(3, &key, request(0, 2)).unwrap();
    outputs(&mut gateway);
    gateway.close(&key);
    assert_eq!((gateway.outstanding(), gateway.sessions()), (0, 0));
    gateway.handle_timeout(5);
    assert!(
        outputs(&mut gateway).is_empty(),
        "the queued request is not sent"
    );
    assert_eq!(gateway.poll_timeout(), None);
    let answered: &Answered = &[row(0, 1, b"ok")];
    assert_eq!(
        gateway.handle_reply(ReplicaId(1), &reply(1, 0, 1, answered, 0)),
        Err(ClientError::NotOutstanding)
    );
}

#[test]
fn a_config_with_a_zero_limit_is_refused() {
    let mut config = config();
    config.client_burst = 0;
    assert!(matches!(
        Gateway::new(config, validator_set(4)),
        Err(ConfigError::Invalid("client_burst must be positive"))
    ));
}

#[test]
fn a_copy_of_a_checked_statement_with_other_signature_bytes_is_checked_again() {
    let mut gateway = gateway(config());
    let (a, b) = (client_key(0).public_key(), client_key(1).public_key());
    for key in [a, b] {
        gateway.open(0, key).unwrap();
    }
    gateway.submit(0, &a, request(0, 1)).unwrap();
    gateway.submit(0, &b, request(1, 1)).unwrap();
    gateway.handle_timeout(2);
    outputs(&mut gateway);
    let batch: &Answered = &[row(0, 1, b"ok a"), row(1, 1, b"ok b")];
    // Validator 1's statement over the batch's reply root is checked and remembered ...
    gateway
        .handle_reply(ReplicaId(1), &reply(1, 0, 1, batch, 0))
        .unwrap();
    // ... and its reply to b, the same statement with zeroed signature bytes, is refused.
    let mut copy = testing::reply(1, (0, 1), batch, 1);
    copy.signature = Signature([0; 64]);
    let copy = Message::Reply(copy).encode();
    assert_eq!(
        gateway.handle_reply(ReplicaId(1), &copy),
        Err(ClientError::BadSignature)
    );
    // Its genuine reply to b still counts, at no signature check.
    gateway
        .handle_reply(ReplicaId(1), &reply(1, 0, 1, batch, 1))
        .unwrap();
    gateway
        .handle_reply(ReplicaId(2), &reply(2, 0, 1, batch, 1))
        .unwrap();
    let answered = outputs(&mut gateway);
    let [GatewayOutput::Answered { replies, .. }] = &answered[..] else {
        panic!("b is answered, got {answered:?}");
    };
    for reply in replies {
        crate::client::verify_reply(&chain(), &validator_set(4), reply).unwrap();
    }
}

#[test]
fn replies_under_different_reply_roots_agree_on_their_result() {
    let mut gateway = gateway(config());
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    gateway.submit(0, &key, request(0, 1)).unwrap();
    gateway.handle_timeout(2);
    outputs(&mut gateway);
    // Validator 1 answers from the batch; validator 2, caught up by state transfer, answers a
    // retransmission under a root of that reply alone.
    let batch: &Answered = &[row(1, 5, b"theirs"), row(0, 1, b"ok")];
    let alone: &Answered = &[row(0, 1, b"ok")];
    gateway
        .handle_reply(ReplicaId(1), &reply(1, 0, 3, batch, 1))
        .unwrap();
    gateway
        .handle_reply(ReplicaId(2), &reply(2, 0, 3, alone, 0))
        .unwrap();
    let answered = outputs(&mut gateway);
    let [GatewayOutput::Answered { replies, .. }] = &answered[..] else {
        panic!("answered, got {answered:?}");
    };
    let mut client = Client::new(chain(), client_key(0), validator_set(4), 1);
    client.track(0, request(0, 1));
    let last = replies
        .iter()
        .map(|r| {
            client
                .handle_reply(&Message::Reply(r.clone()).encode())
                .unwrap()
        })
        .last();
    assert_eq!(last.flatten().map(|o| o.result), Some(b"ok".to_vec()));
}

#[test]
fn a_bucket_outlives_its_session_and_a_forgery_costs_a_whole_burst() {
    let mut config = config();
    config.client_rate = 100;
    config.client_burst = 4;
    config.max_batch_ops = 1;
    let mut gateway = gateway(config);
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    for seq in 1..=4 {
        gateway.submit(0, &key, request(0, seq)).unwrap();
    }
    assert_eq!(
        gateway.submit(0, &key, request(0, 5)),
        Err(Shed::RateLimited)
    );
    gateway.close(&key);
    gateway.open(0, key).unwrap();
    assert_eq!(
        gateway.submit(0, &key, request(0, 5)),
        Err(Shed::RateLimited),
        "reconnecting refills nothing"
    );
    // 10 ms at 100 requests/s is one request: a forged one.
    let mut forged = request(0, 5);
    forged.signature = request(0, 6).signature;
    gateway.submit(10, &key, forged).unwrap();
    assert_eq!(gateway.metrics().shed.get("bad_signature"), Some(&1));
    // The forgery cost 4 more: the next request waits 50 ms, not 10.
    assert_eq!(
        gateway.submit(50, &key, request(0, 6)),
        Err(Shed::RateLimited)
    );
    gateway.submit(60, &key, request(0, 6)).unwrap();
}

#[test]
fn one_validator_can_neither_raise_nor_hold_back_the_view_batches_go_to() {
    let mut config = config();
    config.max_batch_ops = 1;
    let mut gateway = gateway(config);
    let key = client_key(0).public_key();
    gateway.open(0, key).unwrap();
    let answer = |gateway: &mut Gateway, seq: u64, votes: &[(usize, u64)]| {
        gateway.submit(0, &key, request(0, seq)).unwrap();
        outputs(gateway);
        let answered: &Answered = &[row(0, seq, b"ok")];
        for &(replica, view) in votes {
            gateway
                .handle_reply(
                    ReplicaId(replica as u16),
                    &reply(replica, view, seq, answered, 0),
                )
                .unwrap();
        }
        outputs(gateway);
        gateway.primary()
    };
    // Validator 3 signs view 100: the second highest of {100, 8} is 8.
    assert_eq!(answer(&mut gateway, 1, &[(3, 100), (1, 8)]), ReplicaId(0));
    // Validator 2, stuck in view 0, answers first and fast: the view does not fall.
    assert_eq!(answer(&mut gateway, 2, &[(2, 0), (3, 100)]), ReplicaId(0));
    // An honest validator moves on: it moves the view.
    assert_eq!(answer(&mut gateway, 3, &[(1, 9), (2, 0)]), ReplicaId(1));
}
