//! An operator restores a validator's data dir from a backup taken 3 checkpoints earlier,
//! while the cluster runs: the validator must find, from its peers, the statements it signed
//! since the backup, sign nothing that could conflict with them (it stays out of the view it
//! signed them in), say so in its log, and take part again after the next view change. No
//! acknowledged write is lost, and no log holds two signatures of it for one statement.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pbft_core::{Digest, Phase};
use pbft_host::kv::OpResult;
use pbft_host::node::logged_votes;
use pbft_quic::client::{ClusterClient, Transport};

#[macro_use]
mod common;
use common::{Cluster, Launch, get, put};

const TIMEOUT: Duration = Duration::from_secs(20);
/// The validator restored from its backup.
const RESTORED: usize = 1;
/// The testnet's checkpoint interval (the core's default).
const INTERVAL: usize = 128;

over_both_transports! {
    quic_a_validator_restored_from_an_old_backup_signs_nothing_it_signed_otherwise,
    tcp_a_validator_restored_from_an_old_backup_signs_nothing_it_signed_otherwise =>
        a_validator_restored_from_an_old_backup_signs_nothing_it_signed_otherwise;
}

/// Writes `count` keys `prefix0..`, one at a time (one seq each), and returns them.
async fn write(client: &mut ClusterClient, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for n in 0..count {
        let (key, value) = (format!("{prefix}{n}"), format!("v{n}"));
        let (outcome, _) = client.execute(put(&key, &value), TIMEOUT).await.unwrap();
        assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
        written.push((key, value));
    }
    written
}

/// Every statement validator `RESTORED` signed, by (phase, view, seq), from the logs in
/// `dirs`; panics on two digests for one.
fn audit(dirs: &[&Path]) -> usize {
    let mut signed: BTreeMap<(Phase, u64, u64), Digest> = BTreeMap::new();
    for dir in dirs {
        for vote in logged_votes(dir).unwrap() {
            if usize::from(vote.replica.0) != RESTORED {
                continue;
            }
            let first = *signed
                .entry((vote.phase, vote.view, vote.seq))
                .or_insert(vote.digest);
            assert_eq!(
                first,
                vote.digest,
                "validator {RESTORED} signed two digests for {:?} view {} seq {} ({})",
                vote.phase,
                vote.view,
                vote.seq,
                dir.display()
            );
        }
    }
    signed.len()
}

async fn a_validator_restored_from_an_old_backup_signs_nothing_it_signed_otherwise(
    transport: Transport,
) {
    let mut cluster = Cluster::start_with("rollback-test", transport, |index| Launch {
        log: if index == RESTORED { "info" } else { "warn" },
        ..Launch::default()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..4).any(|index| cluster.metric(index, "pbft_peers_connected") < 3) {
        assert!(Instant::now() < deadline, "the links do not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = cluster.client(81);
    let mut acknowledged = write(&mut client, "before", 20).await;
    let backup = cluster.dir.path().join("backup");
    cluster.copy_data_dir(RESTORED, &backup);
    // Three checkpoints and part of a fourth interval: the restored validator's prepares and
    // commits past the last stable checkpoint are what its peers still hold.
    acknowledged.extend(write(&mut client, "after", 3 * INTERVAL + 40).await);
    let stable_before = cluster.metric(RESTORED, "pbft_stable_checkpoint");
    assert!(
        stable_before >= 3 * INTERVAL as u64,
        "stable {stable_before}"
    );

    // The disk is restored from the backup; the log it replaces is kept for the audit.
    cluster.kill(RESTORED);
    let lost = cluster.dir.path().join("lost");
    std::fs::rename(cluster.data_dir(RESTORED), &lost).unwrap();
    std::fs::rename(&backup, cluster.data_dir(RESTORED)).unwrap();
    cluster.spawn(RESTORED);

    // It says what it found, and the cluster goes on meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.log(RESTORED).contains("rollback detected") {
        assert!(
            Instant::now() < deadline,
            "no rollback detected:\n{}",
            cluster.log(RESTORED)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let said: Vec<String> = cluster
        .log(RESTORED)
        .lines()
        .filter(|line| line.contains("rollback"))
        .map(str::to_string)
        .collect();
    println!(
        "{transport:?}: the restored validator's log:\n{}",
        said.join("\n")
    );
    acknowledged.extend(write(&mut client, "meanwhile", 30).await);
    let withheld = cluster.metric(RESTORED, "pbft_withheld_in_recovery_total");
    println!("{transport:?}: signatures withheld by rollback protection: {withheld}");

    // The primary goes: the restored validator must take part in the next view, as one of
    // the three left, once its stable checkpoint passed what it had lost.
    acknowledged.extend(write(&mut client, "catch-up", INTERVAL).await);
    cluster.kill(0);
    let started = Instant::now();
    acknowledged.extend(write(&mut client, "new-view", 20).await);
    println!(
        "{transport:?}: 20 writes after the primary stopped, with the restored validator in the quorum, in {:?}",
        started.elapsed()
    );
    for (key, value) in &acknowledged {
        let (outcome, _) = client.execute(get(key), TIMEOUT).await.unwrap();
        assert_eq!(
            OpResult::decode(&outcome.result),
            Some(OpResult::Value(Some(value.as_bytes().to_vec()))),
            "{key}"
        );
    }

    // No two signatures of the restored validator for one statement, across the log it
    // lost, the one it runs on, and what every other validator logged of it.
    for index in 0..4 {
        cluster.kill(index);
    }
    let dirs: Vec<std::path::PathBuf> = (0..4).map(|index| cluster.data_dir(index)).collect();
    let mut all: Vec<&Path> = dirs.iter().map(|dir| dir.as_path()).collect();
    all.push(&lost);
    let statements = audit(&all);
    println!("{transport:?}: {statements} statements of the restored validator audited");
}
