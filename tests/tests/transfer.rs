//! State transfer against a peer that serves it as slowly as it can while looking alive: the
//! replica that fetches must move to a faster peer after one retransmit interval, not wait for
//! every chunk at the drip-feeder's pace.

use std::collections::BTreeMap;

use pbft_sim::{Fault, Kind, Restart, Scenario, Simulation};

/// Validator 0 is down for 4 s while three clients commit 90 batches (window 4, a checkpoint
/// every 2 seqs), so it restarts far behind and must fetch a checkpoint's state: about 80
/// chunks of 64 bytes. The first peer it asks, validator 1, drip-feeds.
fn scenario(drip_feeder: Fault) -> Scenario {
    Scenario {
        kind: Kind::CrashRestart,
        validators: 4,
        faults: BTreeMap::from([(1, drip_feeder)]),
        clients: 3,
        requests_per_client: 30,
        delay_ms: (2, 6),
        duplicate_percent: 0,
        loss_percent: 0,
        partitions: Vec::new(),
        links: Vec::new(),
        restarts: vec![Restart {
            node: 0,
            at: 20,
            back: 4_000,
            surely: true,
            from_copy: None,
        }],
        max_batch_ops: 1,
        window: 4,
        checkpoint_interval: 2,
        fast_path: true,
        twins: None,
        snapshot_delay_ms: 0,
        via_gateway: false,
        attested: false,
        rogue_gateway: false,
        spares: 0,
        reconfigurations: Vec::new(),
        link_bytes_per_ms: 0,
    }
}

#[test]
fn a_drip_feeding_peer_is_dropped_for_a_faster_one() {
    let report = Simulation::new(7, scenario(Fault::DripFeed)).run();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(
        report.state_transfers >= 1,
        "the restarted replica fetched a state"
    );
    // One request round of 8 chunks, perhaps a second before the interval runs out: never the
    // whole state at the drip-feeder's pace.
    assert!(
        report.drip_chunks <= 16,
        "the drip-feeder served {} chunks: the fetcher stayed with it ({report:?})",
        report.drip_chunks
    );
}

/// Validator 0 is down for 1.5 s while eight clients keep committing (for about 8 s), a
/// checkpoint every 2 seqs: its state (a few hundred chunks of 64 bytes, which peers serve
/// 8 per interval each) takes far longer to fetch than a checkpoint takes to become stable.
/// The transfer must finish while the load goes on, not restart at every new stable
/// checkpoint until the clients stop.
#[test]
fn a_transfer_finishes_while_the_cluster_commits() {
    installs_under_load(BTreeMap::new());
}

/// The same load, with validator 2 sending every replica unasked chunks that do not verify
/// and its stable checkpoint certificate with each of its messages: the fetcher must neither
/// drop the peer serving it nor restart its transfer at each new stable checkpoint.
#[test]
fn unasked_bad_chunks_do_not_restart_a_transfer() {
    installs_under_load(BTreeMap::from([(2, Fault::SpamState)]));
}

/// Runs the loaded scenario with `faults` and checks that the restarted validator installed
/// a state at least 500 ms before the load ended.
fn installs_under_load(faults: BTreeMap<usize, Fault>) {
    let scenario = Scenario {
        faults,
        clients: 8,
        requests_per_client: 150,
        restarts: vec![Restart {
            node: 0,
            at: 20,
            back: 1_500,
            surely: true,
            from_copy: None,
        }],
        ..scenario(Fault::Silent)
    };
    let report = Simulation::new(11, scenario).run();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let installed = report
        .first_install_ms
        .expect("the restarted replica fetched a state");
    assert!(
        installed + 500 < report.last_completed_ms,
        "the state was installed at {installed} ms, with the load over at {} ms",
        report.last_completed_ms
    );
}
