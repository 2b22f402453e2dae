//! Reconfiguration of real `pbft node` processes (over each transport): a fifth validator,
//! started with a key outside the genesis set, waits until `pbft validator add` schedules
//! it, joins at the boundary by state transfer and takes part in commits; then
//! `pbft validator remove` takes a genesis validator out, and from the next epoch its key is
//! refused at the handshake. A client writes all along: every acknowledged write reads back.

use std::process::Command;
use std::time::{Duration, Instant};

use pbft_core::Keypair;
use pbft_host::config::write_key_file;
use pbft_host::kv::OpResult;
use pbft_quic::client::{ClusterClient, Transport};
use pbft_quic::identity::ALPN_PEER;
use pbft_quic::transport::{self, close};
use pbft_tcp::secure::{Role, initiate};

#[macro_use]
mod common;
use common::{Cluster, get, metric_at, put};

const TIMEOUT: Duration = Duration::from_secs(15);

over_both_transports! {
    quic_a_validator_joins_and_one_leaves_losing_no_write,
    tcp_a_validator_joins_and_one_leaves_losing_no_write
        => a_validator_joins_and_one_leaves_losing_no_write;
}

/// Runs `pbft validator <change...>` against the cluster, approved by the key files of
/// validators `approvers`; returns its standard output, or panics with its error.
fn governance(cluster: &Cluster, change: &[String], approvers: &[&str]) -> String {
    let flag = match cluster.transport {
        Transport::Quic => "quic",
        Transport::Tcp => "tcp",
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_pbft"));
    command
        .arg("validator")
        .args(change)
        .arg("--config")
        .arg(&cluster.testnet.network)
        .args(["--transport", flag]);
    for approver in approvers {
        command
            .arg("--approver")
            .arg(cluster.dir.path().join(approver));
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "pbft validator {change:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Writes `count` more keys through `client`, numbered from `acknowledged.len()`.
async fn write(client: &mut ClusterClient, acknowledged: &mut Vec<(String, String)>, count: usize) {
    for _ in 0..count {
        let n = acknowledged.len();
        let (key, value) = (format!("r{n}"), format!("v{n}"));
        let (outcome, _) = client
            .execute(put(&key, &value), TIMEOUT)
            .await
            .unwrap_or_else(|err| panic!("write {n}: {err}"));
        assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
        acknowledged.push((key, value));
    }
}

/// Dials validator 0 as a validator holding `keypair`: true if the node refuses it once the
/// handshake proved the key (QUIC closes with the unknown-key code; TCP closes the channel
/// before anything is read).
async fn refused_at_handshake(cluster: &Cluster, keypair: &Keypair) -> bool {
    let addr = cluster.network.addresses[0];
    let server = cluster.key(0).public_key();
    match cluster.transport {
        Transport::Quic => {
            let endpoint = transport::client_endpoint(addr).unwrap();
            let config = transport::client_config(keypair, server, ALPN_PEER).unwrap();
            let Ok(connecting) = endpoint.connect_with(config, addr, "pbft") else {
                return false;
            };
            let Ok(connection) = connecting.await else {
                return false;
            };
            matches!(
                tokio::time::timeout(TIMEOUT, connection.closed()).await,
                Ok(quinn::ConnectionError::ApplicationClosed(close))
                    if close.error_code.into_inner() == u64::from(close::UNKNOWN_KEY)
            )
        }
        Transport::Tcp => {
            let mut stream = smol::net::TcpStream::connect(addr).await.unwrap();
            let chain = cluster.network.core.chain_id;
            let Ok(channel) =
                initiate(&mut stream, &chain, keypair, (Role::Peer, None), &server).await
            else {
                return false;
            };
            matches!(
                tokio::time::timeout(TIMEOUT, channel.read(&mut stream)).await,
                Ok(Ok(None) | Err(_))
            )
        }
    }
}

/// Writes until `done` holds (checked between writes), at most 60 s.
async fn write_until(
    client: &mut ClusterClient,
    acknowledged: &mut Vec<(String, String)>,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        write(client, acknowledged, 5).await;
    }
}

async fn a_validator_joins_and_one_leaves_losing_no_write(transport: Transport) {
    let mut cluster = Cluster::start("reconfiguration-test", transport);
    let fifth = Keypair::from_seed(&[60; 32]);
    write_key_file(&cluster.dir.path().join("node4.key"), &fifth).unwrap();
    // Started before the change: it waits, asking the validators for epoch changes.
    let (_joiner, _, fifth_metrics) =
        cluster.spawn_beside("node4", Some("node4.key"), "info", false);
    let mut client = cluster.client(91);
    let mut acknowledged = Vec::new();
    write(&mut client, &mut acknowledged, 20).await;

    let approvers = ["node0.key", "node1.key", "node2.key"];
    let added = governance(
        &cluster,
        &["add".into(), fifth.public_key().to_string()],
        &approvers,
    );
    assert!(
        added.contains("takes effect when epoch 1 starts"),
        "{added}"
    );
    // Writes carry the cluster to the boundary; the fifth joins there, fetches the state
    // and orders with the others.
    let genesis_metrics = cluster.testnet.metrics[0];
    write_until(
        &mut client,
        &mut acknowledged,
        "the fifth validator executes with the others",
        || {
            let executed = metric_at(fifth_metrics, "pbft_executed_seq");
            executed > 0.0 && executed + 8.0 >= metric_at(genesis_metrics, "pbft_executed_seq")
        },
    )
    .await;
    // It votes: with validator 0 down, a quorum of the five (four) needs it.
    cluster.kill(0);
    let before = metric_at(fifth_metrics, "pbft_executed_seq");
    write(&mut client, &mut acknowledged, 30).await;
    assert!(
        metric_at(fifth_metrics, "pbft_executed_seq") > before,
        "the fifth validator orders new batches"
    );
    cluster.spawn(0);
    let log = std::fs::read_to_string(cluster.dir.path().join("node4.log")).unwrap();
    assert!(log.contains("joining"), "{log}");

    // Epoch 1 has five validators; four of them (a quorum, the fifth's approval needed)
    // approve removing validator 3, each on its own (`approve` with one key file at a time,
    // as governors who never share their keys would), then it is submitted.
    let removed = cluster.key(3).public_key();
    let proposal = cluster
        .dir
        .path()
        .join("remove-3.toml")
        .display()
        .to_string();
    let out = governance(
        &cluster,
        &[
            "remove".into(),
            removed.to_string(),
            "--propose".into(),
            proposal.clone(),
        ],
        &[],
    );
    assert!(out.contains("for epoch 1 (0 approvals)"), "{out}");
    for approver in ["node0.key", "node1.key", "node2.key", "node4.key"] {
        let out = governance(&cluster, &["approve".into(), proposal.clone()], &[approver]);
        assert!(out.contains(&format!("remove {removed}")), "{out}");
    }
    let out = governance(&cluster, &["submit".into(), proposal.clone()], &[]);
    assert!(out.contains("takes effect when epoch 2 starts"), "{out}");
    // Its request number is spent: the file says so rather than wait for no answer.
    let again = Command::new(env!("CARGO_BIN_EXE_pbft"))
        .args(["validator", "submit", &proposal, "--config"])
        .arg(&cluster.testnet.network)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && said.contains("submitted already"),
        "{said}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.status(0, TIMEOUT).await.map(|s| s.epoch) != Some(2) {
        assert!(
            Instant::now() < deadline,
            "epoch 2 did not start within 60 s"
        );
        write(&mut client, &mut acknowledged, 5).await;
    }
    // From epoch 2 on, validator 0 refuses the removed key at the handshake.
    let unknown = "pbft_messages_rejected_total{reason=\"unknown_key\"}";
    let refused_before = cluster.metric(0, unknown);
    assert!(
        refused_at_handshake(&cluster, &cluster.key(3)).await,
        "the removed key got through"
    );
    assert!(cluster.metric(0, unknown) > refused_before);
    // Its process learns of its removal (from the boundary's checkpoint) and retires.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.log(3).contains("removed from the validator set") {
        assert!(
            Instant::now() < deadline,
            "validator 3 never retired:\n{}",
            cluster.log(3)
        );
        write(&mut client, &mut acknowledged, 5).await;
    }

    // Everything acknowledged reads back from the last set.
    for (key, value) in &acknowledged {
        let (outcome, _) = client.execute(get(key), TIMEOUT).await.unwrap();
        assert_eq!(
            OpResult::decode(&outcome.result),
            Some(OpResult::Value(Some(value.as_bytes().to_vec()))),
            "{key}"
        );
    }
    let executed = metric_at(genesis_metrics, "pbft_executed_seq");
    eprintln!(
        "{transport:?}: {} writes acknowledged and read back across two epochs (seq {executed})",
        acknowledged.len()
    );
}
