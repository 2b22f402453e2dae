//! Clients through `pbft gateway` processes in front of four `pbft node` processes: what an
//! operator does to a gateway (kill it) and what a client sends it (too much).

#[allow(unused_macros)] // The over-both-transports macro: gateways serve QUIC only.
mod common;

use std::time::Duration;

use common::Cluster;
use pbft_core::Keypair;
use pbft_host::kv::{Op, OpResult};
use pbft_quic::client::{ClientFailure, ClusterClient, Transport};

const TIMEOUT: Duration = Duration::from_secs(20);

fn put(key: &str, value: &str) -> Vec<u8> {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
}

/// A client writes through gateway 0, which is SIGKILLed; it connects through gateway 1 and
/// goes on. Every acknowledged write reads back, through the gateway and from the
/// validators directly, and the client's relay claim reached every validator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_clients_go_on_through_another_and_lose_no_acknowledged_write() {
    let cluster = Cluster::start("gateways", Transport::Quic);
    let mut first = cluster.spawn_gateway(0);
    let mut second = cluster.spawn_gateway(1);
    let gateways = cluster.network.gateways.clone();
    let mut client = ClusterClient::connect_via_gateway(
        &cluster.network,
        gateways[0],
        Keypair::from_seed(&[77; 32]),
    )
    .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        client.execute(put(&key, &value), TIMEOUT).await.unwrap();
        acknowledged.push((key, value));
    }
    // The client's relay claim reached every validator: backups, which see its requests
    // only inside pre-prepares, know to answer through the gateway.
    for index in 0..common::VALIDATORS {
        let claims = cluster.metric(index, "pbft_relay_claims_verified_total");
        assert!(claims >= 1, "validator {index} checked {claims} claims");
    }
    // An operation over the network's limit is not even sent.
    let over = vec![0; cluster.network.core.max_request_bytes + 1];
    assert!(matches!(
        client.execute(over, TIMEOUT).await,
        Err(ClientFailure::TooLarge { .. })
    ));
    first.kill().unwrap();
    first.wait().unwrap();
    drop(client);
    let mut client = ClusterClient::connect_via_gateway(
        &cluster.network,
        gateways[1],
        Keypair::from_seed(&[77; 32]),
    )
    .unwrap();
    for i in 20..40 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        client.execute(put(&key, &value), TIMEOUT).await.unwrap();
        acknowledged.push((key, value));
    }
    let mut direct = cluster.client(78);
    for (key, value) in &acknowledged {
        let get = Op::Get {
            key: key.as_bytes().to_vec(),
        }
        .encode();
        let expected = Some(OpResult::Value(Some(value.as_bytes().to_vec())));
        let (through, _) = client.execute(get.clone(), TIMEOUT).await.unwrap();
        assert_eq!(
            OpResult::decode(&through.result),
            expected,
            "{key} through the gateway"
        );
        let (outcome, _) = direct.execute(get, TIMEOUT).await.unwrap();
        assert_eq!(
            OpResult::decode(&outcome.result),
            expected,
            "{key} from the validators"
        );
    }
    // Gateway 1 answered the 20 puts and 40 reads, and exports it.
    let answered = cluster.gateway_metric(1, "pbft_gateway_requests_answered_total", 60);
    assert!(answered >= 60, "gateway 1 answered {answered}");
    second.kill().unwrap();
    second.wait().unwrap();
}

/// Gateway-attested: a client's compare-and-swap executes, but its gateway is SIGKILLed
/// before the client hears; the client sends it again, same number, through another gateway.
/// It executes once (a second execution would find the value set and answer a mismatch), every acknowledged
/// write reads back from the validators, and the gateways attested batches, one signature
/// each, for clients that signed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attested_request_in_flight_through_a_killed_gateway_executes_once_through_another() {
    let cluster = Cluster::start_attested("attested");
    let mut first = cluster.spawn_gateway(0);
    let mut second = cluster.spawn_gateway(1);
    let gateways = cluster.network.gateways.clone();
    let key = || Keypair::from_seed(&[81; 32]);
    let mut client =
        ClusterClient::connect_via_gateway(&cluster.network, gateways[0], key()).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (key, value) = (format!("a{i}"), format!("v{i}"));
        client.execute(put(&key, &value), TIMEOUT).await.unwrap();
        acknowledged.push((key, value));
    }
    let cas = Op::CompareAndSwap {
        key: b"once".to_vec(),
        expected: None,
        new: Some(b"1".to_vec()),
    }
    .encode();
    // Sent; the client stops listening, and the validators execute it.
    let _ = tokio::time::timeout(Duration::from_millis(5), client.execute(cas, TIMEOUT)).await;
    let mut direct = cluster.client(82);
    let get = |key: &str| {
        Op::Get {
            key: key.as_bytes().to_vec(),
        }
        .encode()
    };
    let mut executed = false;
    for _ in 0..50 {
        let (outcome, _) = direct.execute(get("once"), TIMEOUT).await.unwrap();
        if OpResult::decode(&outcome.result) == Some(OpResult::Value(Some(b"1".to_vec()))) {
            executed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        executed,
        "the compare-and-swap executed before its gateway died"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    client
        .switch_gateway(&cluster.network, gateways[1], &key())
        .unwrap();
    let (outcome, _) = client.resume(TIMEOUT).await.unwrap();
    assert_eq!(
        OpResult::decode(&outcome.result),
        Some(OpResult::Done),
        "executed once: a second execution would have found the value"
    );
    acknowledged.push(("once".to_string(), "1".to_string()));
    for i in 20..30 {
        let (key, value) = (format!("a{i}"), format!("v{i}"));
        client.execute(put(&key, &value), TIMEOUT).await.unwrap();
        acknowledged.push((key, value));
    }
    // Read back from the validators directly, by a client that signs its requests: an
    // attested network takes those too.
    for (key, value) in &acknowledged {
        let (outcome, _) = direct.execute(get(key), TIMEOUT).await.unwrap();
        let expected = Some(OpResult::Value(Some(value.as_bytes().to_vec())));
        assert_eq!(OpResult::decode(&outcome.result), expected, "{key}");
    }
    assert_eq!(cluster.gateway_metric(1, "pbft_gateway_attesting", 1), 1);
    let attested = cluster.gateway_metric(1, "pbft_gateway_batches_attested_total", 1);
    assert!(attested >= 1, "gateway 1 attested {attested} batches");
    let checked = cluster.gateway_metric(1, "pbft_gateway_signatures_verified_total", 0);
    assert_eq!(checked, 0, "no client signature to check");
    second.kill().unwrap();
    second.wait().unwrap();
}

/// A client over its gateway's rate limit gets the gateway's reason, not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_the_gateways_reason() {
    let cluster = Cluster::start("gateway-rate", Transport::Quic);
    let config = &cluster.testnet.gateways[2];
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("\n[gateway]\nclient_rate = 1\nclient_burst = 2\n");
    std::fs::write(config, text).unwrap();
    let mut gateway = cluster.spawn_gateway(2);
    let mut client = ClusterClient::connect_via_gateway(
        &cluster.network,
        cluster.network.gateways[2],
        Keypair::from_seed(&[79; 32]),
    )
    .unwrap();
    // The bucket holds 2 requests (copies of one outstanding take none); the third is refused.
    let mut refused = None;
    for i in 0..10 {
        match client.execute(put(&format!("r{i}"), "v"), TIMEOUT).await {
            Ok(_) => {}
            Err(ClientFailure::Refused(reason)) => {
                refused = Some((i, reason));
                break;
            }
            Err(other) => panic!("refused with the gateway's reason, got {other:?}"),
        }
    }
    let (at, reason) = refused.expect("refused within 10 requests at 1 a second");
    assert!(reason.contains("rate limit"), "{reason}");
    let shed = r#"pbft_gateway_shed_total{reason="rate_limited"}"#;
    assert!(
        cluster.gateway_metric(2, shed, 1) >= 1,
        "the refusal is counted by reason"
    );
    // Two fit the bucket; one more may fit if the first two took over a second.
    assert!(at >= 2, "refused at request {at}, within the burst");
    gateway.kill().unwrap();
    gateway.wait().unwrap();
}
