//! A real double-signer: two `pbft node` processes run with validator 0's key at once (the
//! failover gone wrong that gets validators slashed in practice: a standby started from a
//! snapshot of the disk while the primary machine still runs), each with its own data dir
//! and clients. Both are the primary of view 0 and go on from the same seq, each proposing
//! its own batches: every honest
//! validator that sees both signs finds the evidence, which is committed and removes key 0
//! from the set at the next epoch. The test reports, from the honest validators' metrics,
//! the time from the first conflicting message a validator saw to the commit of the
//! evidence; no acknowledged write is lost, and no honest validator is convicted.

use std::process::Command;
use std::time::{Duration, Instant};

use pbft_core::Keypair;
use pbft_host::config::load_network;
use pbft_host::kv::OpResult;
use pbft_quic::client::{ClusterClient, Transport};

#[allow(unused_macros)] // Over TCP only, for now.
mod common;
use common::{Cluster, get, metric_at, put, scrape_whole};

const TIMEOUT: Duration = Duration::from_secs(15);

// Over TCP only for now: over QUIC, in about half the runs the honest validators moved to
// view 1 with no evidence while the second process had signed only two requests' worth
// (see the README's "Not yet"); the cause is not found yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_a_double_signing_validator_is_convicted_and_removed() {
    a_double_signing_validator_is_convicted_and_removed(Transport::Tcp).await;
}

/// A metric of validator `index`, from one scrape of its whole exposition.
fn metric(cluster: &Cluster, index: usize, name: &str) -> f64 {
    metric_at(cluster.testnet.metrics[index], name)
}

/// Writes through `client` until `stop` says so; returns what was acknowledged (a write
/// that timed out is not, and the loop goes on).
async fn write_until(
    mut client: ClusterClient,
    prefix: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(String, String)> {
    let mut acknowledged = Vec::new();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (key, value) = (format!("{prefix}{n}"), format!("v{n}"));
        n += 1;
        if let Ok((outcome, _)) = client
            .execute(put(&key, &value), Duration::from_secs(3))
            .await
        {
            assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
            acknowledged.push((key, value));
        }
    }
    acknowledged
}

/// Copies validator 0's data dir to `twin-data` the way a disk snapshot would: with the
/// process frozen (SIGSTOP), so the copy is what a crash at that moment leaves.
fn snapshot_validator_0(cluster: &Cluster) {
    let pid = cluster.children[0]
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
        .arg(cluster.data_dir(0))
        .arg(cluster.dir.path().join("twin-data"))
        .status()
        .unwrap();
    signal("-CONT");
    assert!(copied.success());
}

async fn a_double_signing_validator_is_convicted_and_removed(transport: Transport) {
    let cluster = Cluster::start("equivocation-test", transport);
    let mut client = cluster.client(71);
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let (key, value) = (format!("w{n}"), format!("v{n}"));
        let (outcome, _) = client.execute(put(&key, &value), TIMEOUT).await.unwrap();
        assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
        acknowledged.push((key, value));
    }
    // With the cluster idle, validator 0's disk is copied and a second process started from
    // the copy, as a standby brought up while the original still runs: both go on from the
    // same seq, each proposing its own clients' requests.
    snapshot_validator_0(&cluster);
    let (_twin, twin_addr, twin_metrics) = cluster.spawn_beside("twin", None, "warn");
    // A client whose link to validator 0 reaches the twin.
    let mut beside = load_network(&cluster.testnet.network).unwrap();
    beside.addresses[0] = twin_addr;
    let mut twin_client =
        ClusterClient::connect(transport, &beside, Keypair::from_seed(&[72; 32])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while twin_client
        .status(0, Duration::from_secs(1))
        .await
        .is_none()
    {
        assert!(Instant::now() < deadline, "the twin does not answer");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = (
        tokio::spawn({
            let stop = stop.clone();
            async move { write_until(client, "a", &stop).await }
        }),
        tokio::spawn({
            let stop = stop.clone();
            async move { write_until(twin_client, "b", &stop).await }
        }),
    );
    let mut observer = cluster.client(73);

    // Every honest validator ends in an epoch without key 0.
    let offender = cluster.key(0).public_key();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut out = 0;
        for index in 1..4 {
            if let Some(status) = observer.status(index, Duration::from_secs(2)).await
                && status.epoch >= 1
                && status.validators == 3
            {
                out += 1;
            }
        }
        if out == 3 {
            break;
        }
        if Instant::now() >= deadline {
            let positions: Vec<String> = (1..4)
                .map(|index| {
                    let at = |name| metric(&cluster, index, name);
                    format!(
                        "validator {index}: view {} executed {} stable {} evidence {} committed {}",
                        at("pbft_view "),
                        at("pbft_executed_seq"),
                        at("pbft_stable_checkpoint"),
                        at("pbft_evidence_total"),
                        at("pbft_evidence_committed_total")
                    )
                })
                .collect();
            let rejected: Vec<String> = scrape_whole(cluster.testnet.metrics[1])
                .lines()
                .filter(|line| line.starts_with("pbft_messages_rejected_total{"))
                .map(str::to_string)
                .collect();
            let twin_metrics = scrape_whole(twin_metrics)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains("bucket"))
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "key 0 still in the set after 90 s:\n{}\nvalidator 1 rejected:\n{}\ntwin metrics:\n{twin_metrics}\n{}\ntwin:\n{}",
                positions.join("\n"),
                rejected.join("\n"),
                cluster.log(1),
                std::fs::read_to_string(cluster.dir.path().join("twin.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (firsts, twins) = (writers.0.await.unwrap(), writers.1.await.unwrap());
    let twin_acknowledged = twins.len();
    acknowledged.extend(firsts);
    acknowledged.extend(twins);
    observer.follow_epochs(TIMEOUT).await;
    assert!(
        observer.validators().id_of(&offender).is_none(),
        "the double signer left"
    );
    for index in 1..4 {
        let key = cluster.key(index).public_key();
        assert!(
            observer.validators().id_of(&key).is_some(),
            "honest validator {index} was convicted"
        );
    }

    // The time from the first conflicting message each honest validator saw to the commit.
    let mut seconds = Vec::new();
    for index in 1..4 {
        let count = metric(&cluster, index, "pbft_evidence_commit_seconds_count");
        let sum = metric(&cluster, index, "pbft_evidence_commit_seconds_sum");
        if count > 0.0 {
            seconds.push(sum / count);
        }
    }
    assert!(
        !seconds.is_empty(),
        "no honest validator timed the evidence"
    );
    let longest = seconds.iter().copied().fold(0.0, f64::max);

    // Everything acknowledged, through either twin, reads back from the honest three.
    for (key, value) in &acknowledged {
        let (outcome, _) = observer.execute(get(key), TIMEOUT).await.unwrap();
        assert_eq!(
            OpResult::decode(&outcome.result),
            Some(OpResult::Value(Some(value.as_bytes().to_vec()))),
            "{key}"
        );
    }
    eprintln!(
        "{transport:?}: double signing to committed evidence in {:.0} ms (the longest of the honest validators' means, {} of 3 timed it); key 0 removed; {} writes acknowledged ({twin_acknowledged} through the twin) and read back",
        longest * 1000.0,
        seconds.len(),
        acknowledged.len()
    );
}
