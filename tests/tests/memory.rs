//! An unbounded run stays bounded: 100,000 sequence numbers through a 4-validator cluster,
//! and after every message each replica holds no more entries than its config allows
//! (`Replica::memory_bound`).

use pbft_core::testing::{client_key, round_robin_request};
use pbft_core::{Config, Keypair, Replica};
use pbft_sim::chain;
use pbft_sim::cluster::Cluster;

const SEQS: u64 = 100_000;
const VALIDATORS: usize = 4;
const CLIENTS: usize = 100;
const WAVE: u64 = 250;

fn config() -> Config {
    let mut config = Config::new(chain());
    config.max_batch_ops = 1;
    config.window = 8;
    config.checkpoint_interval = 4;
    config.retained_batches = 8;
    config.max_pending_requests = WAVE as usize;
    config.max_clients = CLIENTS;
    config
}

#[test]
fn a_hundred_thousand_seqs_stay_within_the_config_bound() {
    let mut cluster = Cluster::new(VALIDATORS, config());
    let bound = cluster.replicas[0].memory_bound();
    let clients: Vec<Keypair> = (0..CLIENTS).map(client_key).collect();
    let mut peak = 0;
    let mut submitted = 0;
    while submitted < SEQS {
        for i in submitted..submitted + WAVE {
            cluster
                .submit(0, round_robin_request(&clients, i, 16))
                .expect("the primary takes the request");
        }
        submitted += WAVE;
        cluster.run_checking(|replica: &Replica| {
            let held = replica.memory_footprint();
            peak = peak.max(held);
            assert!(
                held <= bound,
                "replica {} holds {held} entries, bound {bound}",
                replica.id()
            );
        });
    }
    for replica in &cluster.replicas {
        assert_eq!(
            replica.metrics().batches_committed,
            SEQS,
            "every seq committed"
        );
        assert!(
            replica.low_watermark() >= SEQS - 4,
            "the log was freed up to the end"
        );
    }
    eprintln!("peak entries held by one replica: {peak} of a bound of {bound}");
}
