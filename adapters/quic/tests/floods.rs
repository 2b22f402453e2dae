//! Floods of connections at real `pbft node` processes: thousands of idle connections with
//! throwaway keys must not keep a validator whose links dropped from reconnecting, and a
//! node short of descriptors keeps accepting (it neither stops nor spins).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pbft_core::{Keypair, PublicKey};
use pbft_host::kv::OpResult;
use pbft_host::wire::ClientFrame;
use pbft_quic::client::Transport;
use pbft_quic::identity::ALPN_CLIENT;
use pbft_quic::transport;
use pbft_tcp::secure::{Role, initiate};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

#[macro_use]
mod common;
use common::{Cluster, Launch, VALIDATORS, put};

const TIMEOUT: Duration = Duration::from_secs(20);
/// Connections the flood opens to each validator: more than the 4,352 connections a node
/// held before it counted them by role.
const FLOOD: usize = 5_000;
/// Handshakes the flood runs at once towards one node (below a node's per-address bound:
/// the flood comes from one address).
const FLOOD_CONCURRENCY: usize = 24;
/// Where the flood comes from: not the validators' loopback address, so that its thousands
/// of ports never take one a validator listens on when it restarts.
const FLOOD_SOURCE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 2),
    0,
));
/// A target that refused this many connections in a row is full: stop flooding it.
const GIVE_UP_AFTER: usize = 100;

/// Raises this process's descriptor limit to its hard limit (the flood holds thousands of
/// TCP connections) and returns the hard limit.
fn raise_own_descriptor_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .expect("raising the soft limit to the hard one is always allowed");
    limit.maximum
}

/// A connection the flood holds open; dropping it closes it.
enum Held {
    Quic {
        _connection: quinn::Connection,
        _stream: Option<(quinn::SendStream, quinn::RecvStream)>,
    },
    Tcp {
        _stream: smol::net::TcpStream,
    },
}

impl Held {
    /// Whether the node still holds it, as far as this side knows (TCP: not tracked).
    fn alive(&self) -> bool {
        match self {
            Held::Quic { _connection, .. } => _connection.close_reason().is_none(),
            Held::Tcp { .. } => true,
        }
    }
}

/// The transport configuration of the flood's QUIC connections: they keep themselves alive
/// (every 2 s, not the nodes' 500 ms: 15,000 connections share this process's two cores).
fn flood_transport() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(Duration::from_secs(2)));
    config.max_idle_timeout(Some(Duration::from_secs(5).try_into().unwrap()));
    Arc::new(config)
}

/// Opens one connection to the node at `addr` (holding `server`) as a client with a fresh
/// key, completes the handshake, and (QUIC, when `stream`) opens a stream and sends a frame
/// on it so the node sees the stream. `None` if the node refused it.
async fn open(
    cluster: &Cluster,
    endpoint: Option<&quinn::Endpoint>,
    addr: SocketAddr,
    server: PublicKey,
    seed: u64,
    stream: bool,
) -> Option<Held> {
    let mut bytes = [7u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let throwaway = Keypair::from_seed(&bytes);
    match endpoint {
        Some(endpoint) => {
            let mut config = transport::client_config(&throwaway, server, ALPN_CLIENT).unwrap();
            config.transport_config(flood_transport());
            let connection = endpoint
                .connect_with(config, addr, "pbft")
                .unwrap()
                .await
                .ok()?;
            let opened = if stream {
                let (mut send, recv) = connection.open_bi().await.ok()?;
                let status = pbft_host::framing::encode(&ClientFrame::Status.encode(), 1 << 20);
                send.write_all(&status.unwrap()).await.ok()?;
                Some((send, recv))
            } else {
                None
            };
            // A refusal comes right after the handshake, as a close.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if connection.close_reason().is_some() {
                return None;
            }
            Some(Held::Quic {
                _connection: connection,
                _stream: opened,
            })
        }
        None => {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind(FLOOD_SOURCE).ok()?;
            let tcp = socket.connect(addr).await.ok()?.into_std().ok()?;
            let mut tcp = smol::net::TcpStream::try_from(tcp).ok()?;
            let chain = cluster.network.core.chain_id;
            initiate(&mut tcp, &chain, &throwaway, Role::Client, &server)
                .await
                .ok()?;
            Some(Held::Tcp { _stream: tcp })
        }
    }
}

/// Opens up to [`FLOOD`] idle client connections with throwaway keys to validator `index`;
/// returns those the node admitted (held open) and how many it refused.
async fn flood(cluster: Arc<Cluster>, index: usize) -> (Vec<Held>, usize) {
    let addr = cluster.network.addresses[index];
    let server = cluster.key(index).public_key();
    let next = Arc::new(AtomicUsize::new(0));
    let refused_in_a_row = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..FLOOD_CONCURRENCY {
        // A UDP socket per worker: one socket's buffer overflows with the keep-alives of
        // thousands of connections, and they time out.
        let endpoint = (cluster.transport == Transport::Quic)
            .then(|| quinn::Endpoint::client(FLOOD_SOURCE).unwrap());
        let cluster = cluster.clone();
        let (next, refused_in_a_row) = (next.clone(), refused_in_a_row.clone());
        workers.push(tokio::spawn(async move {
            let (mut held, mut refused) = (Vec::new(), 0);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= FLOOD || refused_in_a_row.load(Ordering::Relaxed) >= GIVE_UP_AFTER {
                    return (held, refused);
                }
                // Half the QUIC connections open a stream, half never do.
                let seed = (index * FLOOD + n) as u64;
                let opening = open(&cluster, endpoint.as_ref(), addr, server, seed, n % 2 == 0);
                match tokio::time::timeout(Duration::from_secs(5), opening).await {
                    Ok(Some(connection)) => {
                        refused_in_a_row.store(0, Ordering::Relaxed);
                        held.push(connection);
                    }
                    _ => {
                        refused_in_a_row.fetch_add(1, Ordering::Relaxed);
                        refused += 1;
                    }
                }
            }
        }));
    }
    let mut all = (Vec::new(), 0);
    for worker in workers {
        let (held, refused) = worker.await.unwrap();
        all.0.extend(held);
        all.1 += refused;
    }
    all
}

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
    let hard = raise_own_descriptor_limit().map_or("unlimited".to_string(), |l| l.to_string());
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
        .map(|index| tokio::spawn(flood(cluster.clone(), index)))
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
            let rejected: Vec<String> = common::scrape(cluster.testnet.metrics[index])
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
    raise_own_descriptor_limit();
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
