//! Floods of connections at real `pbft node` processes: thousands of idle connections with
//! throwaway keys must not keep a validator whose links dropped from reconnecting, and a
//! node short of descriptors keeps accepting (it neither stops nor spins).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pbft_host::kv::OpResult;
use pbft_quic::client::Transport;

#[macro_use]
mod common;
use common::{Cluster, FLOOD_SOURCE, Launch, VALIDATORS, put};

const TIMEOUT: Duration = Duration::from_secs(20);
/// Connections the flood opens to each validator: more than the 4,352 connections a node
/// held before it counted them by role.
const FLOOD: usize = 5_000;
over_both_transports! {
    idle_connections_with_throwaway_keys_do_not_keep_a_validator_out_quic,
    idle_connections_with_throwaway_keys_do_not_keep_a_validator_out_tcp
        => idle_connections_with_throwaway_keys_do_not_keep_a_validator_out;
}

/// A 4-validator cluster whose nodes start with the soft descriptor limit most systems give
/// (1,024; the hard limit as this machine's), a client writing. Validator 3 goes down (its
/// links to the others drop); 5,000 idle client connections with throwaway keys go to each
/// of the others (QUIC: half of them never open a stream); validator 3 comes back and must
/// reconnect to all three within 2 s, and catch up.
async fn idle_connections_with_throwaway_keys_do_not_keep_a_validator_out(transport: Transport) {
    let hard =
        common::raise_own_descriptor_limit().map_or("unlimited".to_string(), |l| l.to_string());
    let launch = |_| Launch {
        wrapper: vec![
            "prlimit".into(),
            format!("--nofile=1024:{hard}"),
            "--".into(),
        ],
        log: "warn",
    };
    let mut cluster = Cluster::start_with("throwaway-flood", transport, launch);
    // Both clients connect before the flood (after it, the nodes' client places are full).
    let mut writer = cluster.client(90);
    let mut observer = cluster.client(91);
    writer.execute(put("before", "1"), TIMEOUT).await.unwrap();
    // A status query opens each client's stream to every validator (QUIC shows a node a
    // stream once something is sent on it).
    for index in 0..VALIDATORS {
        assert!(writer.status(index, TIMEOUT).await.is_some());
        assert!(observer.status(index, TIMEOUT).await.is_some());
    }
    cluster.kill(3);
    let committed = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn({
        let committed = committed.clone();
        async move {
            for write in 0.. {
                let (outcome, _) = writer
                    .execute(put(&format!("w{write}"), "v"), TIMEOUT)
                    .await
                    .unwrap_or_else(|err| panic!("write {write}: {err}"));
                assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
                committed.fetch_max(outcome.seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let started = Instant::now();
    let cluster = Arc::new(cluster);
    let floods: Vec<_> = (0..3)
        .map(|index| tokio::spawn(common::flood(cluster.clone(), index, FLOOD)))
        .collect();
    let mut held = Vec::new();
    for (index, flood) in floods.into_iter().enumerate() {
        let (connections, refused) = flood.await.unwrap();
        eprintln!(
            "{transport:?}: validator {index} holds {} flood connections, refused {refused}",
            connections.len()
        );
        held.push(connections);
    }
    let flooded = started.elapsed();
    let alive: Vec<usize> = held
        .iter()
        .map(|held| held.iter().filter(|c| c.alive()).count())
        .collect();
    eprintln!("{transport:?}: flood connections still open at the heal: {alive:?}");
    let mut cluster = Arc::into_inner(cluster).expect("the floods are done");
    let healed = Instant::now();
    cluster.spawn(3);
    let mut reconnected = None;
    while healed.elapsed() < Duration::from_secs(30) {
        if cluster.metric(3, "pbft_peers_connected") == 3 {
            reconnected = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let target = committed.load(Ordering::Relaxed);
    let mut caught_up = None;
    while reconnected.is_some() && healed.elapsed() < Duration::from_secs(30) {
        if observer
            .status(3, Duration::from_secs(1))
            .await
            .is_some_and(|status| status.executed >= target)
        {
            caught_up = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!writing.is_finished(), "the writer failed");
    writing.abort();
    eprintln!(
        "{transport:?}: flood of {FLOOD} per validator took {} ms; after the heal validator 3 reconnected to its 3 peers in {reconnected:?} and executed seq {target} in {caught_up:?}",
        flooded.as_millis()
    );
    let Some(reconnected) = reconnected else {
        for index in 0..VALIDATORS {
            let rejected: Vec<String> = common::scrape_whole(cluster.testnet.metrics[index])
                .lines()
                .filter(|line| {
                    line.starts_with("pbft_messages_rejected_total{")
                        || line.starts_with("pbft_peers")
                })
                .map(String::from)
                .collect();
            eprintln!("validator {index}: {rejected:?}\n{}", cluster.log(index));
        }
        panic!("validator 3 did not reconnect within 30 s");
    };
    assert!(
        reconnected <= Duration::from_secs(2),
        "validator 3 took {reconnected:?} to reconnect"
    );
    assert!(caught_up.is_some(), "validator 3 did not catch up");
    drop(held);
}

/// A validator whose process may hold 256 descriptors (TCP: each connection is one),
/// flooded with 1,000 connections from another address that never start their handshake:
/// it keeps accepting (a fresh client is served by it and its writes commit), and it said at
/// start which connection limits it derived from its descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_256_descriptors_keeps_accepting_under_a_flood() {
    common::raise_own_descriptor_limit();
    const SHORT: usize = 1;
    let launch = |index| match index {
        SHORT => Launch {
            wrapper: vec!["prlimit".into(), "--nofile=256:256".into(), "--".into()],
            log: "warn,pbft_host=info",
        },
        _ => Launch::default(),
    };
    let cluster = Cluster::start_with("short-of-descriptors", Transport::Tcp, launch);
    let mut client = cluster.client(93);
    client.execute(put("before", "1"), TIMEOUT).await.unwrap();
    let addr = cluster.network.addresses[SHORT];
    let connecting: Vec<_> = (0..1_000)
        .map(|_| {
            tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(FLOOD_SOURCE).unwrap();
                tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await
            })
        })
        .collect();
    let mut flood = Vec::new();
    for connection in connecting {
        if let Ok(Ok(stream)) = connection.await.unwrap() {
            flood.push(stream);
        }
    }
    eprintln!("the flood holds {} connections", flood.len());
    // A client that comes after the flood is served by the node short of descriptors.
    let mut fresh = cluster.client(94);
    let started = Instant::now();
    let mut last = 0;
    for write in 0..3 {
        let (outcome, _) = fresh
            .execute(put(&format!("after{write}"), "2"), TIMEOUT)
            .await
            .unwrap();
        last = outcome.seq;
    }
    let deadline = Instant::now() + TIMEOUT;
    while fresh
        .status(SHORT, Duration::from_secs(1))
        .await
        .is_none_or(|status| status.executed < last)
    {
        assert!(
            Instant::now() < deadline,
            "the node short of descriptors stopped serving:\n{}",
            cluster.log(SHORT)
        );
    }
    eprintln!(
        "a fresh client was served by the node with 256 descriptors {} ms after the flood",
        started.elapsed().as_millis()
    );
    let log = cluster.log(SHORT);
    assert!(
        log.contains("connection limits") && log.contains("descriptors=256"),
        "{log}"
    );
    drop(flood);
}
