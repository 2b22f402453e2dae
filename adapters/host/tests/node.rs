//! Four node drivers wired in memory, each with a real WAL on disk and the key-value store:
//! writes commit and read back, and a node killed at any point (its process gone, its data
//! dir kept) comes back from its log without ever signing a second digest for a statement.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pbft_core::{
    BatchVerifier, ChainId, CheckPool, Client, Config, CryptoError, Keypair, Phase, PublicKey,
    Record, ValidatorSet,
};
use pbft_host::checks::ThreadChecks;
use pbft_host::kv::{KvStore, Op, OpResult};
use pbft_host::node::{Application, Node, Target};
use pbft_host::wal::{Wal, WalOptions};

const N: usize = 4;

/// A check pool that counts the batches handed to it.
struct Counted(ThreadChecks, Arc<AtomicUsize>);

impl CheckPool for Counted {
    fn width(&self) -> usize {
        self.0.width()
    }

    fn verify_all(&self, pieces: Vec<BatchVerifier>) -> Vec<Result<(), CryptoError>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.verify_all(pieces)
    }
}

fn chain() -> ChainId {
    ChainId::from_name("node-tests")
}

fn keys() -> Vec<Keypair> {
    (0..N as u8)
        .map(|i| Keypair::from_seed(&[i + 11; 32]))
        .collect()
}

fn config() -> Config {
    let mut config = Config::new(chain());
    config.window = 8;
    config.checkpoint_interval = 4;
    config.retained_batches = 8;
    config
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<Node<KvStore>>>,
    set: ValidatorSet,
    public: Vec<PublicKey>,
    network: VecDeque<(usize, PublicKey, Vec<u8>)>,
    to_clients: BTreeMap<PublicKey, Vec<Vec<u8>>>,
    now: u64,
    /// Kill this node after this many more deliveries: mid-flight.
    kill_after: Option<(usize, u32)>,
    /// The view each killed node was in, to compare with what it restores.
    views_at_kill: Vec<Option<u64>>,
    restores: u32,
    /// Nodes killed with a durable commit of their store started on its thread and not
    /// reported yet (the commit itself may have finished).
    kills_mid_sync: u32,
    /// Of those, nodes killed with a delivery or an install waiting for that commit.
    kills_with_waiting: u32,
    /// Batches the nodes with a thread pool handed to it.
    pool_calls: Arc<AtomicUsize>,
}

impl Cluster {
    fn new() -> Cluster {
        let public: Vec<PublicKey> = keys().iter().map(Keypair::public_key).collect();
        let set = ValidatorSet::new(0, &public).unwrap();
        let dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut cluster = Cluster {
            nodes: (0..N).map(|_| None).collect(),
            dirs,
            set,
            public,
            network: VecDeque::new(),
            to_clients: BTreeMap::new(),
            now: 1_000,
            kill_after: None,
            views_at_kill: vec![None; N],
            restores: 0,
            kills_mid_sync: 0,
            kills_with_waiting: 0,
            pool_calls: Arc::default(),
        };
        for index in 0..N {
            cluster.start(index);
        }
        cluster
    }

    fn dir(&self, index: usize) -> PathBuf {
        self.dirs[index].path().join("wal")
    }

    /// Starts (or restarts) a node from its data dir: its log and its application store.
    fn start(&mut self, index: usize) {
        let key = keys().remove(index);
        let mut node = Node::open(
            &self.dir(index),
            config(),
            self.set.clone(),
            key,
            KvStore::new(),
        )
        .expect("the node opens its log");
        if index % 2 == 1 {
            // Half the nodes check large batches on a thread pool, as a node alone on a
            // machine does by default.
            let checks = ThreadChecks::new(2).expect("the system starts threads");
            node.check_signatures_on(Box::new(Counted(checks, self.pool_calls.clone())));
        } else {
            // The other half take checkpoint snapshots and make their stores durable on
            // threads, as `pbft node` does; their results come in when the network is idle
            // (`settle_threads`), so a node is often killed with a sync in flight and a
            // delivery waiting for it.
            node.snapshots_on_thread()
                .expect("the system starts threads");
            node.syncs_on_thread().expect("the system starts threads");
        }
        if let Some(view) = self.views_at_kill[index].take() {
            // Every flush synced, so the log knows the view the node was in.
            assert_eq!(
                node.replica().view(),
                view,
                "node {index} restored its view"
            );
            self.restores += 1;
        }
        self.nodes[index] = Some(node);
    }

    /// `kill -9`: the node is gone mid-flight; what it did not sync is lost with it.
    fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].take() {
            self.views_at_kill[index] = Some(node.replica().view());
            self.kills_mid_sync += u32::from(node.store().syncing());
            self.kills_with_waiting += u32::from(node.waiting_for_sync() > 0);
        }
    }

    fn flush(&mut self, index: usize) {
        let now = self.now;
        let Some(node) = self.nodes[index].as_mut() else {
            return;
        };
        let transmits = node.flush(now).expect("the node persists and executes");
        let from = self.public[index];
        for transmit in transmits {
            match transmit.to {
                Target::Validator(key) => {
                    if let Some(peer) = self.public.iter().position(|k| *k == key) {
                        self.network.push_back((peer, from, transmit.bytes));
                    }
                }
                Target::AllValidators => {
                    for peer in (0..N).filter(|&p| p != index) {
                        self.network.push_back((peer, from, transmit.bytes.clone()));
                    }
                }
                Target::Client(key) => self.to_clients.entry(key).or_default().push(transmit.bytes),
            }
        }
    }

    /// Waits for every node's snapshot and sync threads to finish what they were handed and
    /// hands the results over (before virtual time moves: a real snapshot or fsync takes
    /// real time); true if that put messages on the network.
    fn settle_threads(&mut self) -> bool {
        for index in 0..N {
            if let Some(node) = self.nodes[index].as_mut() {
                node.wait_for_sync()
                    .expect("the sync thread makes the store durable");
                node.wait_for_snapshots(self.now)
                    .expect("the snapshot thread reads the store");
                self.flush(index);
            }
        }
        !self.network.is_empty()
    }

    /// Delivers messages and advances time until `done` holds (or 60 s of virtual time).
    fn run_until(&mut self, mut done: impl FnMut(&mut Cluster) -> bool) {
        let deadline = self.now + 60_000;
        // Messages that keep answering each other without time passing would never reach the
        // deadline: a step budget catches them.
        let mut steps = 0u32;
        while !done(self) {
            steps += 1;
            assert!(steps < 1_000_000, "messages bounce without end");
            if self.now >= deadline {
                for node in self.nodes.iter().flatten() {
                    eprintln!("{:?}\n  {:?}", node.replica(), node.metrics());
                }
                panic!("the cluster made no progress");
            }
            if let Some((to, from, bytes)) = self.network.pop_front() {
                if let Some(node) = self.nodes[to].as_mut() {
                    let _ = node.handle_message(self.now, &from, &bytes);
                    self.flush(to);
                }
                match self.kill_after {
                    Some((victim, 0)) => {
                        self.kill(victim);
                        self.kill_after = None;
                    }
                    Some((victim, steps)) => self.kill_after = Some((victim, steps - 1)),
                    None => {}
                }
                continue;
            }
            if self.settle_threads() {
                continue;
            }
            let next = self
                .nodes
                .iter()
                .flatten()
                .filter_map(Node::poll_timeout)
                .min()
                .unwrap_or(self.now + 10);
            self.now = self.now.max(next);
            for index in 0..N {
                if let Some(node) = self.nodes[index].as_mut() {
                    node.handle_timeout(self.now);
                    self.flush(index);
                }
            }
        }
    }

    /// A client of the cluster with the key of `seed`.
    fn client(&self, seed: u8) -> Client {
        Client::new(
            chain(),
            Keypair::from_seed(&[seed; 32]),
            self.set.clone(),
            1,
        )
    }

    /// Writes `key` = `value` through consensus and notes it in `written` once acknowledged.
    fn put(
        &mut self,
        client: &mut Client,
        written: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        key: String,
        value: String,
    ) {
        let (key, value) = (key.into_bytes(), value.into_bytes());
        let put = Op::Put {
            key: key.clone(),
            value: value.clone(),
        };
        assert_eq!(self.call(client, put), OpResult::Done);
        written.insert(key, value);
    }

    /// Sends an operation from `client` to every live node and waits for f + 1 replies.
    fn call(&mut self, client: &mut Client, op: Op) -> OpResult {
        let request = client.request(self.now, op.encode());
        for index in 0..N {
            if let Some(node) = self.nodes[index].as_mut() {
                let _ = node.submit(self.now, request.clone());
                self.flush(index);
            }
        }
        let key = client.public_key();
        let mut outcome = None;
        self.run_until(|cluster| {
            for reply in cluster.to_clients.remove(&key).unwrap_or_default() {
                if let Ok(Some(done)) = client.handle_reply(&reply) {
                    outcome = Some(done);
                }
            }
            outcome.is_some()
        });
        OpResult::decode(&outcome.unwrap().result).expect("a key-value result")
    }
}

fn keys_in(node: &Node<KvStore>) -> u64 {
    KvStore::len(&node.store().read().unwrap()).unwrap()
}

/// Every vote in a node's log, by (phase, view, seq): no two digests for one statement.
fn signed_statements(dir: &std::path::Path) -> Vec<(Phase, u64, u64, pbft_core::Digest)> {
    let (_, records) = Wal::open(dir, WalOptions::default()).unwrap();
    records
        .iter()
        .filter_map(|bytes| match Record::decode(bytes).unwrap() {
            Record::Signed(vote) => Some((vote.phase, vote.view, vote.seq, vote.digest)),
            _ => None,
        })
        .collect()
}

#[test]
fn writes_commit_read_back_and_survive_killed_nodes() {
    let mut cluster = Cluster::new();
    let mut client = cluster.client(99);
    let mut signed: BTreeMap<(usize, Phase, u64, u64), pbft_core::Digest> = BTreeMap::new();
    let mut written = BTreeMap::new();
    for round in 0..40u32 {
        // Bring back whoever is down, from its data dir; every other write, kill a node in
        // the middle of the next one (the primary of view 0 first).
        for index in 0..N {
            if cluster.nodes[index].is_none() {
                cluster.start(index);
            }
        }
        if round % 2 == 0 {
            let victim = (round as usize / 2) % N;
            cluster.kill_after = Some((victim, round * 7 % 13));
        }
        let (key, value) = (format!("key-{}", round % 7), format!("value-{round}"));
        cluster.put(&mut client, &mut written, key, value);
    }
    for index in 0..N {
        if cluster.nodes[index].is_none() {
            cluster.start(index);
        }
    }
    // Every acknowledged write reads back through consensus.
    for (key, value) in &written {
        let read = cluster.call(&mut client, Op::Get { key: key.clone() });
        assert_eq!(read, OpResult::Value(Some(value.clone())));
    }
    // Let the restarted nodes catch up to the same executed seq, then compare their stores.
    cluster.run_until(|cluster| {
        let nodes = || cluster.nodes.iter().flatten();
        let highest = nodes().map(|node| node.replica().executed_seq()).max();
        nodes().all(|node| {
            node.replica().is_idle()
                && Some(node.replica().executed_seq()) == highest
                && keys_in(node) == written.len() as u64
        })
    });
    let restored: u64 = cluster
        .nodes
        .iter()
        .flatten()
        .map(|node| node.stats().installs + node.metrics().batches_caught_up)
        .sum();
    assert!(restored > 0, "restarted nodes caught up from their peers");
    assert!(
        cluster.restores >= 15,
        "nodes were killed and restarted: {}",
        cluster.restores
    );
    assert!(
        cluster.kills_mid_sync > 0,
        "some were killed with a sync of their store unreported"
    );
    let compactions: u64 = cluster
        .nodes
        .iter()
        .flatten()
        .map(|n| n.stats().compactions)
        .sum();
    assert!(compactions > 0, "logs were compacted at stable checkpoints");
    let snapshots: Vec<Vec<u8>> = cluster
        .nodes
        .iter()
        .flatten()
        .map(|n| n.app().snapshot(&n.store().read().unwrap()).unwrap())
        .collect();
    assert!(
        snapshots.windows(2).all(|pair| pair[0] == pair[1]),
        "all stores agree"
    );
    // No node signed two digests for one statement, across its restarts (its log says).
    for index in 0..N {
        cluster.kill(index);
        for (phase, view, seq, digest) in signed_statements(&cluster.dir(index)) {
            let first = *signed.entry((index, phase, view, seq)).or_insert(digest);
            assert_eq!(
                first, digest,
                "node {index} signed two digests for {phase:?} {view} {seq}"
            );
        }
    }
    for index in 0..N {
        let (_, records) = Wal::open(&cluster.dir(index), WalOptions::default()).unwrap();
        assert!(!records.is_empty(), "node {index} logged what it signed");
    }
}

#[test]
fn a_burst_of_writes_commits_with_backups_checking_on_a_thread_pool() {
    let mut cluster = Cluster::new();
    // 100 clients write at once, to the primary only: the backups first meet the requests
    // in pre-prepares, whose client signatures nodes 1 and 3 check on their pools.
    let mut clients: Vec<Client> = (0..100).map(|seed| cluster.client(seed)).collect();
    for (index, client) in clients.iter_mut().enumerate() {
        let put = Op::Put {
            key: format!("burst-{index}").into_bytes(),
            value: vec![index as u8; 64],
        };
        let request = client.request(cluster.now, put.encode());
        cluster.nodes[0]
            .as_mut()
            .unwrap()
            .submit(cluster.now, request)
            .unwrap();
    }
    cluster.flush(0);
    let mut done = vec![false; clients.len()];
    cluster.run_until(|cluster| {
        for (client, done) in clients.iter_mut().zip(done.iter_mut()) {
            for reply in cluster
                .to_clients
                .remove(&client.public_key())
                .unwrap_or_default()
            {
                if let Ok(Some(outcome)) = client.handle_reply(&reply) {
                    assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
                    *done = true;
                }
            }
        }
        done.iter().all(|&d| d)
    });
    assert!(
        cluster.pool_calls.load(Ordering::Relaxed) > 0,
        "the pools checked a batch"
    );
    // Every node executes every write.
    cluster.run_until(|cluster| cluster.nodes.iter().flatten().all(|n| keys_in(n) == 100));
    // Each checkpoint's time on the node's thread is sampled for the metrics: a few more
    // writes take the log past one.
    let mut client = cluster.client(200);
    let mut written = BTreeMap::new();
    for round in 0..4 {
        cluster.put(
            &mut client,
            &mut written,
            format!("more-{round}"),
            "v".into(),
        );
    }
    for index in 0..N {
        let node = cluster.nodes[index].as_mut().unwrap();
        let checkpoints = node.replica().executed_seq() / config().checkpoint_interval;
        assert!(checkpoints > 0, "seq {}", node.replica().executed_seq());
        let samples = node.take_samples();
        assert_eq!(
            samples.checkpoint_seconds.len() as u64,
            checkpoints,
            "{samples:?}"
        );
        // Nodes 0 and 2 took every snapshot on their thread, and signed each checkpoint.
        let on_thread = samples.snapshot_seconds.len() as u64;
        assert_eq!(
            on_thread,
            (index % 2 == 0) as u64 * checkpoints,
            "node {index}"
        );
        let stable = node.replica().stable_checkpoint().seq;
        assert!(
            node.replica().holds_checkpoint_state(stable),
            "node {index}"
        );
    }
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let public: Vec<PublicKey> = keys().iter().map(Keypair::public_key).collect();
    let set = ValidatorSet::new(0, &public).unwrap();
    let open = || {
        Node::open(
            dir.path(),
            config(),
            set.clone(),
            keys().remove(0),
            KvStore::new(),
        )
    };
    let first = open().expect("the first node takes the dir");
    assert!(matches!(open(), Err(pbft_host::node::NodeError::Locked(_))));
    drop(first);
    assert!(open().is_ok(), "the lock goes with the node");
}

#[test]
fn a_data_dir_of_another_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let public: Vec<PublicKey> = keys().iter().map(Keypair::public_key).collect();
    let set = ValidatorSet::new(0, &public).unwrap();
    let open = |config: Config| {
        Node::open(
            dir.path(),
            config,
            set.clone(),
            keys().remove(0),
            KvStore::new(),
        )
    };
    drop(open(config()).expect("a fresh dir takes the configured chain"));
    drop(open(config()).expect("and keeps it"));
    // An agreed limit changed: the chain id the host derives changes with it.
    let mut changed = config();
    changed.max_clients += 1;
    changed.chain_id = ChainId::for_network("node-tests", &changed);
    let err = open(changed).err().expect("another chain is refused");
    assert!(
        matches!(
            err,
            pbft_host::node::NodeError::Store(pbft_host::store::StoreError::OtherChain { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("agreed limits"), "{err}");
    assert!(open(config()).is_ok(), "the refusal changed nothing");
}

#[test]
fn every_node_killed_at_once_loses_no_acknowledged_write() {
    let mut cluster = Cluster::new();
    let mut client = cluster.client(98);
    let mut written = BTreeMap::new();
    for round in 0..6u32 {
        for i in 0..5u32 {
            let (key, value) = (format!("key-{round}-{i}"), format!("value-{round}-{i}"));
            cluster.put(&mut client, &mut written, key, value);
        }
        // A power cut: every node at once, whatever it had in flight; then all come back,
        // each from its own disk alone.
        let durable: Vec<u64> = cluster
            .nodes
            .iter()
            .flatten()
            .map(|node| node.replica().executed_seq())
            .collect();
        for index in 0..N {
            cluster.kill(index);
        }
        cluster.network.clear();
        for (index, &durable) in durable.iter().enumerate() {
            cluster.start(index);
            // The store may lag the log: the log's redo records bring it back on the first
            // round (a host gives a restarted node a first tick), from its own disk alone.
            // A delivery that waited for a sync in flight at the cut runs then too.
            let now = cluster.now;
            cluster.nodes[index].as_mut().unwrap().handle_timeout(now);
            cluster.flush(index);
            let node = cluster.nodes[index].as_ref().unwrap();
            assert!(
                node.replica().executed_seq() >= durable,
                "node {index} is back at {}, below the seq {durable} it executed before the cut",
                node.replica().executed_seq()
            );
        }
    }
    assert!(
        cluster.kills_with_waiting > 0,
        "some were cut with a delivery waiting for their store's sync"
    );
    for (key, value) in &written {
        let read = cluster.call(&mut client, Op::Get { key: key.clone() });
        assert_eq!(read, OpResult::Value(Some(value.clone())));
    }
    // Proofs for seqs committed before the last restart come from the store, with their QC.
    let node = cluster.nodes[0].as_mut().unwrap();
    let seq = node.replica().executed_seq();
    node.read().unwrap();
    let committed = node
        .store()
        .committed(seq)
        .unwrap()
        .expect("the last batch is kept");
    pbft_core::verify_qc(&chain(), &cluster.set, &committed.certificate).unwrap();
    let digest = committed.batch.requests[0].digest(&chain());
    let proof = node.proof(seq, &digest).expect("a proof");
    pbft_core::verify_inclusion(&proof.certificate, &proof.request, &proof.proof).unwrap();
}

/// Validator `offender`'s two commits at `seq` for different digests: what a node that
/// double-signs sends.
fn equivocation(offender: usize, seq: u64) -> pbft_core::Evidence {
    let vote = |digest| {
        pbft_core::Vote::new(
            &chain(),
            0,
            Phase::Commit,
            (0, seq),
            pbft_core::Digest([digest; 32]),
            pbft_core::ReplicaId(offender as u16),
            &keys()[offender],
        )
    };
    pbft_core::Evidence {
        epoch: 0,
        first: vote(1),
        second: vote(2),
    }
}

fn convicted(node: &Node<KvStore>) -> Vec<pbft_host::kv::Conviction> {
    KvStore::convicted(&node.store().read().unwrap()).unwrap()
}

#[test]
fn evidence_a_backup_forwards_convicts_its_offender_on_every_node_and_survives_a_power_cut() {
    let mut cluster = Cluster::new();
    let mut client = cluster.client(97);
    let mut written = BTreeMap::new();
    cluster.put(&mut client, &mut written, "a".into(), "1".into());
    // Node 2 holds validator 3's two commits and forwards them, as a replica that saw both.
    let evidence = pbft_core::Message::Evidence(equivocation(3, 1)).encode();
    cluster
        .network
        .push_back((0, cluster.public[2], evidence.clone()));
    cluster.run_until(|cluster| {
        cluster
            .nodes
            .iter()
            .flatten()
            .all(|node| !convicted(node).is_empty())
    });
    let seq = convicted(cluster.nodes[0].as_ref().unwrap())[0].2;
    for node in cluster.nodes.iter().flatten() {
        assert_eq!(
            convicted(node),
            vec![(0, 3, seq)],
            "one conviction, at the same seq"
        );
        assert_eq!(node.metrics().evidence_committed, 1);
    }
    // Sent again (a replica that restarted may): the primary commits it once more in this
    // view, and the conviction keeps its first seq.
    cluster.network.push_back((0, cluster.public[1], evidence));
    cluster.put(&mut client, &mut written, "b".into(), "2".into());
    for index in 0..N {
        cluster.nodes[index].as_mut().unwrap().sync_store().unwrap();
        cluster.kill(index);
    }
    cluster.network.clear();
    for index in 0..N {
        cluster.start(index);
        let node = cluster.nodes[index].as_ref().unwrap();
        assert_eq!(convicted(node), vec![(0, 3, seq)], "node {index} keeps it");
    }
    let read = cluster.call(&mut client, Op::Get { key: b"b".to_vec() });
    assert_eq!(read, OpResult::Value(Some(b"2".to_vec())));
}
