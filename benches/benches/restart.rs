//! A validator restarting with a large application store: how long from `Node::open` to a
//! replica back at its durable seq, with every key and the exactly-once table read back.
//!
//! The store is filled in a child process that then exits without closing anything, as a
//! killed node does, so the first open also pays for redb's recovery of an unclean file; the
//! later opens follow clean closes. The store is filled the way a node fills it (one round per batch: the key-value
//! application's writes, one exactly-once row per request, the batch with its QC, a durable
//! commit), skipping consensus: batches of 100 puts of 128-byte values from 100 clients, the
//! last `retained` batches kept as a node keeps them after its stable checkpoint.

use std::time::Instant;

use pbft_core::testing::chain;
use pbft_core::{
    Batch, CommitPath, Config, Delivery, Hasher, Keypair, PublicKey, QuorumCertificate, Request,
    Signature, ValidatorSet,
};
use pbft_host::kv::{KvStore, Op};
use pbft_host::node::{Application, Node};
use pbft_host::store::Store;

const BATCH: usize = 100;
const CLIENTS: u64 = 100;

/// Fills a data dir with `keys` keys; returns the durable seq.
fn fill(dir: &std::path::Path, keys: usize, retained: u64) -> u64 {
    let (mut store, _) = Store::open(dir).expect("open the store");
    let mut app = KvStore::new();
    let clients: Vec<PublicKey> = (0..CLIENTS)
        .map(|i| PublicKey(Hasher::new(b"restart-bench").u64(i).finish().0))
        .collect();
    let batches = keys.div_ceil(BATCH) as u64;
    for seq in 1..=batches {
        // Unsigned requests: the store never checks signatures, and signing a million would
        // time the signer, not the restart.
        let requests: Vec<Request> = (0..BATCH as u64)
            .map(|i| {
                let n = (seq - 1) * BATCH as u64 + i;
                Request {
                    client: clients[(n % CLIENTS) as usize],
                    client_seq: n / CLIENTS + 1,
                    op: Op::Put {
                        key: format!("key-{n:08}").into_bytes(),
                        value: vec![7; 128],
                    }
                    .encode(),
                    signature: Signature([0; 64]),
                    attestation: None,
                }
            })
            .collect();
        let batch = Batch::of(requests);
        let delivery = Delivery {
            seq,
            certificate: QuorumCertificate {
                chain_id: chain(),
                epoch: 0,
                view: 0,
                seq,
                digest: batch.digest(&chain()),
                path: CommitPath::ThreePhase,
                signatures: vec![],
            },
            execute: (0..BATCH as u32).collect(),
            decided: vec![],
            checkpoint: false,
            forgotten: vec![],
            client_floor: 0,
            batch,
        };
        let mut round = store.begin().expect("begin");
        let ops: Vec<&[u8]> = delivery.batch.requests.iter().map(|r| &r.op[..]).collect();
        let results = app.execute(round.tx(), &ops).expect("execute");
        round
            .record_delivery(&delivery, &results)
            .expect("record the delivery");
        round
            .prune_batches(seq.saturating_sub(retained))
            .expect("prune");
        store.commit(round).expect("commit");
        if seq % (batches / 10).max(1) == 0 {
            eprint!("\r  filling: {} of {keys} keys", seq as usize * BATCH);
        }
    }
    eprintln!();
    batches
}

/// Set in the child that fills the store: the data dir.
const FILL_DIR: &str = "PBFT_RESTART_BENCH_FILL";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let keys: usize = std::env::var("PBFT_RESTART_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = Config::new(chain());
    let retained = config.retained_batches as u64 + config.checkpoint_interval;
    if let Some(dir) = std::env::var_os(FILL_DIR) {
        fill(std::path::Path::new(&dir), keys, retained);
        // Gone without closing the store, like a killed node.
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let status = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .env(FILL_DIR, dir.path())
        .status()
        .expect("run the filling child");
    assert!(status.success(), "the filling child failed");
    let filled = started.elapsed();
    let durable = keys.div_ceil(BATCH) as u64;
    let bytes = std::fs::metadata(dir.path().join(pbft_host::store::STORE_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let key = Keypair::from_seed(&[3; 32]);
    let set = ValidatorSet::new(0, &[key.public_key()]).expect("set");
    println!(
        "store: {keys} keys, {durable} batches ({retained} kept with their QCs), {:.0} MB on disk, filled in {:.1} s",
        bytes as f64 / 1e6,
        filled.as_secs_f64()
    );
    for attempt in ["after a kill", "after a clean close", "after a clean close"] {
        let started = Instant::now();
        let keypair = Keypair::from_seed(&key.seed());
        let mut node = Node::open(dir.path(), config.clone(), set.clone(), keypair, KvStore)
            .expect("the node opens");
        let opened = started.elapsed();
        let entries = node.entries().expect("entries");
        let counted = started.elapsed();
        assert_eq!(node.replica().executed_seq(), durable);
        assert_eq!(entries, keys as u64);
        println!(
            "restart {attempt}: back at durable seq {durable} in {:.0} ms (Node::open), {:.0} ms with the key count",
            opened.as_secs_f64() * 1000.0,
            counted.as_secs_f64() * 1000.0
        );
    }
}
