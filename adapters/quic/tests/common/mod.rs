//! What the multi-process tests share: a local cluster of `pbft node` processes (over QUIC
//! or TCP), its metrics, and the key-value ops they write.

// Each test file is its own crate and uses part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pbft_core::{Keypair, PublicKey};
use pbft_host::config::{Network, load_network, read_key_file};
use pbft_host::kv::Op;
use pbft_host::testnet::{self, Testnet};
use pbft_host::wire::ClientFrame;
use pbft_quic::client::{ClusterClient, Transport};
use pbft_quic::identity::ALPN_CLIENT;
use pbft_quic::transport;
use pbft_tcp::secure::{Role, initiate};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

pub(crate) const VALIDATORS: usize = 4;
/// Gateways each test cluster has configs for (started only by the tests that use them).
pub(crate) const GATEWAYS: usize = 3;

/// How a node's process is started.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    /// A command the node runs under (e.g. `prlimit --nofile=256:256 --`), or nothing.
    pub(crate) wrapper: Vec<String>,
    /// Its `RUST_LOG`.
    pub(crate) log: &'static str,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            wrapper: Vec::new(),
            log: "warn",
        }
    }
}

/// A local cluster of `pbft node` processes.
pub(crate) struct Cluster {
    pub(crate) transport: Transport,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) testnet: Testnet,
    pub(crate) network: Network,
    pub(crate) children: Vec<Option<Child>>,
    launches: Vec<Launch>,
}

impl Cluster {
    pub(crate) fn start(name: &str, transport: Transport) -> Cluster {
        Cluster::start_with(name, transport, |_| Launch::default())
    }

    /// A gateway-attested cluster over QUIC: its gateways sign for their clients.
    #[allow(dead_code)] // Used by the gateway tests only.
    pub(crate) fn start_attested(name: &str) -> Cluster {
        Cluster::start_full((name, true), Transport::Quic, |_| Launch::default())
    }

    /// A cluster whose node `index` is started as `launch(index)` says (on every restart).
    pub(crate) fn start_with(
        name: &str,
        transport: Transport,
        launch: impl Fn(usize) -> Launch,
    ) -> Cluster {
        Cluster::start_full((name, false), transport, launch)
    }

    fn start_full(
        name: (&str, bool),
        transport: Transport,
        launch: impl Fn(usize) -> Launch,
    ) -> Cluster {
        let mut cluster = Cluster::create(name, transport, launch);
        for index in 0..VALIDATORS {
            cluster.spawn(index);
        }
        cluster
    }

    /// The cluster's keys and configs, with no node started yet: a test may rewrite the
    /// configs first (other addresses), then [`Cluster::spawn`] each node.
    pub(crate) fn create(
        (name, attested): (&str, bool),
        transport: Transport,
        launch: impl Fn(usize) -> Launch,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes = (VALIDATORS, GATEWAYS);
        let testnet = testnet::create_with(dir.path(), nodes, (name, attested), |index| {
            [index as u8 + 40; 32]
        })
        .unwrap();
        let network = load_network(&testnet.network).unwrap();
        Cluster {
            transport,
            dir,
            testnet,
            network,
            children: (0..VALIDATORS).map(|_| None).collect(),
            launches: (0..VALIDATORS).map(launch).collect(),
        }
    }

    pub(crate) fn spawn(&mut self, index: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{index}.log")))
            .unwrap();
        let launch = &self.launches[index];
        let binary = env!("CARGO_BIN_EXE_pbft");
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["node", "--config"])
            .arg(&self.testnet.nodes[index])
            .args(["--transport", self.flag()])
            .env("RUST_LOG", launch.log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[index] = Some(child);
    }

    pub(crate) fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status of a graceful stop.
    pub(crate) fn stop(&mut self, index: usize) -> bool {
        let Some(mut child) = self.children[index].take() else {
            return true;
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap().success()
    }

    fn flag(&self) -> &'static str {
        match self.transport {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }

    pub(crate) fn client(&self, seed: u8) -> ClusterClient {
        ClusterClient::connect(
            self.transport,
            &self.network,
            Keypair::from_seed(&[seed; 32]),
        )
        .unwrap()
    }

    /// Starts `pbft gateway` number `index`; its log goes to `gateway<index>.log`.
    pub(crate) fn spawn_gateway(&self, index: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("gateway{index}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_pbft"))
            .args(["gateway", "--config"])
            .arg(&self.testnet.gateways[index])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub(crate) fn data_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("node{index}-data"))
    }

    pub(crate) fn key(&self, index: usize) -> Keypair {
        read_key_file(&self.dir.path().join(format!("node{index}.key"))).unwrap()
    }

    pub(crate) fn metric(&self, index: usize, name: &str) -> u64 {
        scrape_whole(self.testnet.metrics[index])
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// A metric of gateway `index` once it reaches `at_least` (the gateway copies its
    /// counters out every 100 ms), or its last value after 5 s.
    pub(crate) fn gateway_metric(&self, index: usize, name: &str, at_least: u64) -> u64 {
        let mut value = 0;
        for _ in 0..50 {
            value = scrape_whole(self.testnet.gateway_metrics[index])
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0);
            if value >= at_least {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        value
    }

    /// Starts one more `pbft node` beside the cluster: `<name>.toml` is validator 0's config
    /// with the data dir `<name>-data`, fresh listen and metrics addresses and, if given,
    /// another key file, and rollback protection off if `unprotected`; its log goes to
    /// `<name>.log` at `RUST_LOG=log`. Returns the process (killed when dropped), its listen
    /// and its metrics addresses.
    pub(crate) fn spawn_beside(
        &self,
        name: &str,
        key_file: Option<&str>,
        log: &str,
        unprotected: bool,
    ) -> (KilledOnDrop, SocketAddr, SocketAddr) {
        let dir = self.dir.path();
        let port = || testnet::free_port().unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], port()));
        let config: String = std::fs::read_to_string(dir.join("node0.toml"))
            .unwrap()
            .lines()
            .map(|line| match (line.split(" = ").next(), key_file) {
                (Some("key_file"), Some(key_file)) => format!("key_file = \"{key_file}\""),
                (Some("data_dir"), _) => format!("data_dir = \"{name}-data\""),
                (Some("listen"), _) => format!("listen = \"{listen}\""),
                (Some("metrics"), _) => format!("metrics = \"{metrics}\""),
                _ => line.to_string(),
            })
            .map(|line| line + "\n")
            .collect();
        let config = match unprotected {
            // Top-level fields go before the first table.
            true => format!("unsafe_skip_rollback_check = true\n{config}"),
            false => config,
        };
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let stderr = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pbft"))
            .args(["node", "--config"])
            .arg(&path)
            .args(["--transport", self.flag()])
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        (KilledOnDrop(child), listen, metrics)
    }

    /// Copies validator `index`'s data dir to `to` the way a disk snapshot or a backup
    /// would: with the process frozen (SIGSTOP), so the copy is what a crash at that moment
    /// leaves.
    pub(crate) fn copy_data_dir(&self, index: usize, to: &std::path::Path) {
        let pid = self.children[index]
            .as_ref()
            .expect("running")
            .id()
            .to_string();
        let signal = |name: &str| {
            let status = Command::new("kill").args([name, &pid]).status().unwrap();
            assert!(status.success(), "kill {name}");
        };
        signal("-STOP");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(self.data_dir(index))
            .arg(to)
            .status()
            .unwrap();
        signal("-CONT");
        assert!(copied.success());
    }

    pub(crate) fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{index}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..VALIDATORS {
            self.kill(index);
        }
    }
}

/// A process a test started outside the [`Cluster`], killed when the test ends, passed or
/// not (a panicking test must not leave a node running).
pub(crate) struct KilledOnDrop(pub(crate) Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One scrape, as a scraper sees it: empty if the node is down, possibly cut short if the
/// node is too busy to answer within its timeouts.
pub(crate) fn scrape(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// The whole exposition of a running node (it ends in `# EOF`): a scrape a busy node cut
/// short is retried, so a missing line means a zero, not a timeout. Empty if the node is
/// down, or if 20 tries in about 2 s all came back short.
pub(crate) fn scrape_whole(addr: SocketAddr) -> String {
    for _ in 0..20 {
        if TcpStream::connect(addr).is_err() {
            return String::new();
        }
        let text = scrape(addr);
        if text.contains("# EOF") {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    String::new()
}

/// A metric of the node serving metrics at `addr`, from one whole scrape (0 if absent or
/// down).
pub(crate) fn metric_at(addr: SocketAddr, name: &str) -> f64 {
    scrape_whole(addr)
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn put(key: &str, value: &str) -> Vec<u8> {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
}

pub(crate) fn get(key: &str) -> Vec<u8> {
    Op::Get {
        key: key.as_bytes().to_vec(),
    }
    .encode()
}

/// Handshakes the flood runs at once towards one node (below a node's per-address bound:
/// the flood comes from one address).
pub(crate) const FLOOD_CONCURRENCY: usize = 24;
/// Where the flood comes from: not the validators' loopback address, so that its thousands
/// of ports never take one a validator listens on when it restarts.
pub(crate) const FLOOD_SOURCE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 2),
    0,
));
/// A target that refused this many connections in a row is full: stop flooding it.
pub(crate) const GIVE_UP_AFTER: usize = 100;

/// Raises this process's descriptor limit to its hard limit (the flood holds thousands of
/// TCP connections) and returns the hard limit.
pub(crate) fn raise_own_descriptor_limit() -> Option<u64> {
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
pub(crate) enum Held {
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
    pub(crate) fn alive(&self) -> bool {
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
            initiate(&mut tcp, &chain, &throwaway, (Role::Client, None), &server)
                .await
                .ok()?;
            Some(Held::Tcp { _stream: tcp })
        }
    }
}

/// Opens up to `count` idle client connections with throwaway keys to validator `index`;
/// returns those the node admitted (held open) and how many it refused.
pub(crate) async fn flood(cluster: Arc<Cluster>, index: usize, count: usize) -> (Vec<Held>, usize) {
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
                if n >= count || refused_in_a_row.load(Ordering::Relaxed) >= GIVE_UP_AFTER {
                    return (held, refused);
                }
                // Half the QUIC connections open a stream, half never do.
                let seed = (index * count + n) as u64;
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

/// [`flood`], then holds what the node admitted until `running` drops; how many it held.
pub(crate) async fn idle_flood(
    cluster: Arc<Cluster>,
    index: usize,
    count: usize,
    running: Arc<AtomicBool>,
) -> u64 {
    let (held, _) = flood(cluster, index, count).await;
    while running.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.len() as u64
}

/// A test per transport, `quic_…` and `tcp_…`, each running one body.
#[allow(unused_macros)] // Not every test file runs over both transports.
macro_rules! over_both_transports {
    ($($quic:ident, $tcp:ident => $body:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $quic() {
            $body(Transport::Quic).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $tcp() {
            $body(Transport::Tcp).await;
        }
    )*};
}
