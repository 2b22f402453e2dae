//! The in-process cluster benchmark: 4 replicas wired in memory, real signatures, one thread.
//!
//! Prints committed ops/s, signature verifications per committed op, bytes sent per op, and
//! the share of CPU time spent verifying signatures, for batch sizes 1, 10, 100 and 1000.
//! The share is estimated by counting: each replica counts the signatures it checked alone and
//! in batches; multiplied by the per-signature cost measured here for each kind, divided by the
//! run's time (the cluster runs on one thread, so wall time is CPU time). Allocations and
//! bytes allocated per committed op are counted by the global allocator over the whole run:
//! the four replicas and the in-memory network that carries their messages. A second table
//! runs batches of 100 and 1000 with each replica's signature checks on 1 and on 2 threads.

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use pbft_benches::{batch_of, signed_by_distinct_keys};
use pbft_core::testing::{chain, client_key, round_robin_request};
use pbft_core::{Config, Hasher, Keypair, Request};
use pbft_host::checks::ThreadChecks;
use pbft_sim::cluster::Cluster;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const VALIDATORS: usize = 4;
const CLIENTS: usize = 200;
const OP_BYTES: usize = 128;

/// Seconds per signature: checked alone, and inside a batch of `batch` signatures.
fn verify_costs(batch: usize) -> (f64, f64) {
    let key = Keypair::from_seed(&[3; 32]);
    let digest = Hasher::new(b"bench").finish();
    let signature = key.sign(&digest);
    let rounds = 2000;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(key.verifying_key().verify(black_box(&digest), &signature)).ok();
    }
    let single = start.elapsed().as_secs_f64() / rounds as f64;
    let signed = signed_by_distinct_keys(batch.max(2), &digest);
    let rounds = (4000 / signed.len()).max(4);
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(batch_of(&signed, &digest).verify()).ok();
    }
    let batched = start.elapsed().as_secs_f64() / (rounds * signed.len()) as f64;
    (single, batched)
}

struct Run {
    ops: u64,
    elapsed: Duration,
    verified: u64,
    batch_verified: u64,
    bytes: u64,
    allocations: usize,
    bytes_allocated: usize,
}

/// Commits `ops` requests in batches of `batch`, each replica checking signatures on
/// `threads` threads ([`ThreadChecks`]; 1 keeps every check on the cluster's thread).
fn run(batch: usize, ops: usize, threads: usize) -> Run {
    let mut config = Config::new(chain());
    config.max_batch_ops = batch;
    config.max_pending_requests = ops + 1;
    let mut cluster = Cluster::new(VALIDATORS, config);
    if threads > 1 {
        for replica in &mut cluster.replicas {
            let checks = ThreadChecks::new(threads).expect("the system starts threads");
            replica.set_check_pool(Box::new(checks));
        }
    }
    // Clients sign before the clock starts: in a deployment they run elsewhere.
    let clients: Vec<Keypair> = (0..CLIENTS).map(client_key).collect();
    let requests: Vec<Request> = (0..ops as u64)
        .map(|i| round_robin_request(&clients, i, OP_BYTES))
        .collect();
    let counted = Region::new(ALLOCATOR);
    let start = Instant::now();
    for request in requests {
        cluster
            .submit(0, request)
            .expect("the primary accepts the request");
    }
    cluster.run();
    let elapsed = start.elapsed();
    let allocated = counted.change();
    let executed = cluster
        .replicas
        .iter()
        .map(|r| r.metrics().requests_executed)
        .min()
        .unwrap_or(0);
    assert_eq!(executed, ops as u64, "every replica executed every request");
    Run {
        ops: executed,
        elapsed,
        verified: cluster
            .replicas
            .iter()
            .map(|r| r.metrics().signatures_verified)
            .sum(),
        batch_verified: cluster
            .replicas
            .iter()
            .map(|r| r.metrics().signatures_batch_verified)
            .sum(),
        bytes: cluster.bytes_sent,
        allocations: allocated.allocations + allocated.reallocations,
        bytes_allocated: allocated.bytes_allocated + allocated.bytes_reallocated.max(0) as usize,
    }
}

fn main() {
    println!(
        "in-process cluster: {VALIDATORS} validators, {OP_BYTES}-byte ops from {CLIENTS} clients, one thread, real ed25519"
    );
    println!(
        "{:>6} {:>7} {:>12} {:>14} {:>12} {:>16} {:>10} {:>14}",
        "batch",
        "ops",
        "ops/s",
        "verifies/op",
        "bytes/op",
        "verify CPU share",
        "allocs/op",
        "alloc bytes/op"
    );
    for (batch, ops) in [(1, 1000), (10, 4000), (100, 8000), (1000, 8000)] {
        let result = run(batch, ops, 1);
        let (single_cost, batched_cost) = verify_costs(batch + 1);
        let singles = (result.verified - result.batch_verified) as f64;
        let verify_time = singles * single_cost + result.batch_verified as f64 * batched_cost;
        let secs = result.elapsed.as_secs_f64();
        println!(
            "{:>6} {:>7} {:>12.0} {:>14.2} {:>12.0} {:>15.0}% {:>10.1} {:>14.0}",
            batch,
            result.ops,
            result.ops as f64 / secs,
            result.verified as f64 / result.ops as f64,
            result.bytes as f64 / result.ops as f64,
            100.0 * verify_time / secs,
            result.allocations as f64 / result.ops as f64,
            result.bytes_allocated as f64 / result.ops as f64,
        );
    }
    // Verification on more cores: the replicas take turns on the cluster's thread, so while
    // one checks a batch's pieces on a pool, the pool's threads are the only ones busy (a
    // validator alone on a machine with that many cores).
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("signature checks on several threads ({cores} cores here):");
    println!(
        "{:>6} {:>8} {:>12} {:>9}",
        "batch", "threads", "ops/s", "speedup"
    );
    for (batch, ops) in [(100, 8000), (1000, 8000)] {
        let mut alone = 0.0;
        for threads in [1, 2] {
            let result = run(batch, ops, threads);
            let rate = result.ops as f64 / result.elapsed.as_secs_f64();
            if threads == 1 {
                alone = rate;
            }
            println!(
                "{batch:>6} {threads:>8} {rate:>12.0} {:>8.2}x",
                rate / alone
            );
        }
    }
    let (single, batched) = verify_costs(65);
    println!(
        "ed25519 verify on this machine ({} backend): {:.1} µs alone, {:.1} µs per signature in a batch of 65",
        pbft_core::curve_backend(),
        single * 1e6,
        batched * 1e6
    );
}
