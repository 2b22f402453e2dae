//! What the multi-process tests share: a local cluster of `pbft node` processes (over QUIC
//! or TCP), its metrics, and the key-value ops they write.

// Each test file is its own crate and uses part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use pbft_core::Keypair;
use pbft_host::config::{Network, load_network, read_key_file};
use pbft_host::kv::Op;
use pbft_host::testnet::{self, Testnet};
use pbft_quic::client::{ClusterClient, Transport};

pub(crate) const VALIDATORS: usize = 4;

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

    /// A cluster whose node `index` is started as `launch(index)` says (on every restart).
    pub(crate) fn start_with(
        name: &str,
        transport: Transport,
        launch: impl Fn(usize) -> Launch,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let testnet =
            testnet::create(dir.path(), VALIDATORS, name, |index| [index as u8 + 40; 32]).unwrap();
        let network = load_network(&testnet.network).unwrap();
        let mut cluster = Cluster {
            transport,
            dir,
            testnet,
            network,
            children: (0..VALIDATORS).map(|_| None).collect(),
            launches: (0..VALIDATORS).map(launch).collect(),
        };
        for index in 0..VALIDATORS {
            cluster.spawn(index);
        }
        cluster
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

    pub(crate) fn data_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("node{index}-data"))
    }

    pub(crate) fn key(&self, index: usize) -> Keypair {
        read_key_file(&self.dir.path().join(format!("node{index}.key"))).unwrap()
    }

    pub(crate) fn metric(&self, index: usize, name: &str) -> u64 {
        scrape(self.testnet.metrics[index])
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
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

pub(crate) fn scrape(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
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

/// A test per transport, `quic_…` and `tcp_…`, each running one body.
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
