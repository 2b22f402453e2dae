//! The write-ahead log on this machine's disk: appends/s with and without group commit, and
//! fsyncs per committed batch when four replicas persist everything they sign through it.
//!
//! The cluster half drives real replicas the way a node does with group commit: each round, a
//! replica handles every message waiting for it, appends every `Persist` record those produce,
//! makes them durable with one `fdatasync`, and only then lets the `Send`s go.

use std::collections::VecDeque;
use std::time::Instant;

use pbft_core::testing::{
    chain, client_key, key_of, round_robin_request, validator_keys, validator_set,
};
use pbft_core::{Config, Destination, Keypair, Output, PublicKey, Replica, Request};
use pbft_host::wal::{Wal, WalOptions};

const RECORD_BYTES: usize = 150;

/// Appends `total` records of a vote's size, syncing every `group`; returns appends/s and
/// the mean fdatasync time.
fn raw(total: usize, group: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    let record = vec![0x5a; RECORD_BYTES];
    let start = Instant::now();
    for i in 0..total {
        wal.append(&record).expect("append");
        if (i + 1) % group == 0 {
            wal.sync().expect("sync");
        }
    }
    wal.sync().expect("sync");
    let secs = start.elapsed().as_secs_f64();
    (total as f64 / secs, secs / wal.stats().syncs as f64)
}

struct Node {
    replica: Replica,
    wal: Wal,
    inbox: VecDeque<(PublicKey, Vec<u8>)>,
    _dir: tempfile::TempDir,
}

/// Runs `ops` requests through 4 replicas, each persisting to its own WAL; returns
/// (committed batches, syncs per replica per batch, appends per replica per batch, ops/s).
fn cluster(ops: usize, batch: usize) -> (u64, f64, f64, f64) {
    let public: Vec<PublicKey> = (0..4).map(key_of).collect();
    let set = validator_set(4);
    let mut config = Config::new(chain());
    config.max_batch_ops = batch;
    config.max_pending_requests = ops + 1;
    let mut nodes: Vec<Node> = validator_keys(4)
        .into_iter()
        .map(|key| {
            let dir = tempfile::tempdir().expect("temp dir");
            let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
            Node {
                replica: Replica::new(config.clone(), set.clone(), key).expect("config"),
                wal,
                inbox: VecDeque::new(),
                _dir: dir,
            }
        })
        .collect();
    let clients: Vec<Keypair> = (0..100).map(client_key).collect();
    let requests: Vec<Request> = (0..ops as u64)
        .map(|i| round_robin_request(&clients, i, 128))
        .collect();
    let start = Instant::now();
    let mut now = 0;
    for request in requests {
        let _ = nodes[0].replica.submit(now, request);
    }
    loop {
        let mut sends = Vec::new();
        for (index, node) in nodes.iter_mut().enumerate() {
            while let Some((from, bytes)) = node.inbox.pop_front() {
                let _ = node.replica.handle_message(now, &from, &bytes);
            }
            node.replica.handle_timeout(now);
            let mut delivered = Vec::new();
            while let Some(output) = node.replica.poll_output() {
                match output {
                    Output::Persist(record) => node.wal.append(&record.encode()).expect("append"),
                    Output::Send { to, bytes } => sends.push((index, to, bytes)),
                    Output::Deliver(delivery) => delivered.push(delivery),
                    Output::Evidence(_) | Output::Install(_) => {}
                    other => panic!("the bench does not handle {other:?}"),
                }
            }
            // Group commit: one sync covers every record of the round, before any send.
            node.wal.sync().expect("sync");
            for delivery in delivered {
                let results = vec![Vec::new(); delivery.execute.len()];
                let snapshot = delivery.checkpoint.then(Vec::new);
                node.replica
                    .executed(now, delivery.seq, results, snapshot)
                    .expect("in order");
            }
            while let Some(output) = node.replica.poll_output() {
                match output {
                    Output::Persist(record) => node.wal.append(&record.encode()).expect("append"),
                    Output::Send { to, bytes } => sends.push((index, to, bytes)),
                    _ => {}
                }
            }
            node.wal.sync().expect("sync");
        }
        for (from, to, bytes) in sends {
            let key = public[from];
            match to {
                Destination::Validator(id) => nodes[id.0 as usize].inbox.push_back((key, bytes)),
                Destination::AllValidators => {
                    for (peer, node) in nodes.iter_mut().enumerate() {
                        if peer != from {
                            node.inbox.push_back((key, bytes.clone()));
                        }
                    }
                }
                Destination::Client(_) | Destination::Outside(_) => {}
            }
        }
        if nodes
            .iter()
            .all(|n| n.inbox.is_empty() && n.replica.is_idle())
        {
            break;
        }
        if nodes.iter().all(|n| n.inbox.is_empty()) {
            now += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let batches = nodes[1].replica.metrics().batches_committed;
    let syncs: u64 = nodes.iter().map(|n| n.wal.stats().syncs).sum();
    let appends: u64 = nodes.iter().map(|n| n.wal.stats().appends).sum();
    let per = |total: u64| total as f64 / 4.0 / batches as f64;
    (batches, per(syncs), per(appends), ops as f64 / secs)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("WAL on this machine's disk ({RECORD_BYTES}-byte records, fdatasync per group)");
    println!(
        "{:>8} {:>14} {:>16}",
        "group", "appends/s", "fdatasync (ms)"
    );
    for group in [1, 10, 100, 1000] {
        let total = (group * 200).clamp(2_000, 50_000);
        let (rate, sync) = raw(total, group);
        println!("{group:>8} {rate:>14.0} {:>16.3}", sync * 1000.0);
    }
    println!();
    println!("4 replicas, each persisting what it signs before sending it, one sync per round");
    println!(
        "{:>6} {:>8} {:>10} {:>22} {:>22} {:>10}",
        "batch", "ops", "batches", "fsyncs/batch/replica", "records/batch/replica", "ops/s"
    );
    for (ops, batch) in [(2_000, 10), (8_000, 100)] {
        let (batches, syncs, appends, rate) = cluster(ops, batch);
        println!("{batch:>6} {ops:>8} {batches:>10} {syncs:>22.2} {appends:>22.2} {rate:>10.0}");
    }
}
