//! A real double-signer: two `pbft node` processes run with the primary's key at once (the
//! failover gone wrong that gets validators slashed in practice: a standby started from a
//! snapshot of the disk while the primary machine still runs), each with its own data dir
//! and clients. Both are the primary of the current view and go on from the same seq, each
//! proposing its own batches: every honest validator that sees both signs finds the
//! evidence, which is committed and removes the key from the set at the next epoch. The test reports, from the honest validators' metrics,
//! the time from the first conflicting message a validator saw to the commit of the
//! evidence; no acknowledged write is lost, and no honest validator is convicted.

use std::time::{Duration, Instant};

use pbft_core::Keypair;
use pbft_host::config::load_network;
use pbft_host::kv::OpResult;
use pbft_quic::client::{ClusterClient, Transport};

#[macro_use]
mod common;
use common::{Cluster, get, metric_at, put, scrape_whole};

const TIMEOUT: Duration = Duration::from_secs(15);

over_both_transports! {
    quic_a_double_signing_validator_is_convicted_and_removed,
    tcp_a_double_signing_validator_is_convicted_and_removed =>
        a_double_signing_validator_is_convicted_and_removed;
}

/// A metric of validator `index`, from one scrape of its whole exposition.
fn metric(cluster: &Cluster, index: usize, name: &str) -> f64 {
    metric_at(cluster.testnet.metrics[index], name)
}

/// The primary's index once every validator answers in the same view (ids are positions in
/// the genesis set; the primary of view v is v mod 4).
async fn settled_primary(client: &mut ClusterClient) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for index in 0..4 {
            if let Some(status) = client.status(index, Duration::from_secs(1)).await {
                views.push(status.view);
            }
        }
        if views.len() == 4 && views.iter().all(|&view| view == views[0]) {
            return (views[0] % 4) as usize;
        }
        assert!(
            Instant::now() < deadline,
            "the validators settle on no view: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

async fn a_double_signing_validator_is_convicted_and_removed(transport: Transport) {
    let cluster = Cluster::start("equivocation-test", transport);
    // Every link up first: a validator that misses the first proposals while its link still
    // dials suspects the primary alone and waits in a view of its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..4).any(|index| cluster.metric(index, "pbft_peers_connected") < 3) {
        assert!(
            Instant::now() < deadline,
            "the validators' links do not connect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = cluster.client(71);
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let (key, value) = (format!("w{n}"), format!("v{n}"));
        let (outcome, _) = client.execute(put(&key, &value), TIMEOUT).await.unwrap();
        assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
        acknowledged.push((key, value));
    }
    // With the cluster idle, the primary's disk is copied and a second process started from
    // the copy, as a standby brought up while the original still runs: both go on from the
    // same seq, each proposing its own clients' requests. (The primary is the current view's:
    // a link still connecting as the cluster started may have cost a view change.)
    let twinned = settled_primary(&mut client).await;
    cluster.copy_data_dir(twinned, &cluster.dir.path().join("twin-data"));
    let key_file = format!("node{twinned}.key");
    // Rollback protection would keep the twin from signing (the primary's proposals since
    // the copy are its lost statements): it runs without, as a build that bypasses it would.
    let (_twin, twin_addr, twin_metrics) =
        cluster.spawn_beside("twin", Some(&key_file), "warn", true);
    // A client whose link to the primary reaches the twin.
    let mut beside = load_network(&cluster.testnet.network).unwrap();
    beside.addresses[twinned] = twin_addr;
    let honest: Vec<usize> = (0..4).filter(|&index| index != twinned).collect();
    let mut twin_client =
        ClusterClient::connect(transport, &beside, Keypair::from_seed(&[72; 32])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while twin_client
        .status(twinned, Duration::from_secs(1))
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

    // Every honest validator ends in an epoch without the twinned key.
    let offender = cluster.key(twinned).public_key();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut out = 0;
        for &index in &honest {
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
            let positions: Vec<String> = honest
                .iter()
                .map(|&index| {
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
            let rejected: Vec<String> = scrape_whole(cluster.testnet.metrics[honest[0]])
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
                "key {twinned} still in the set after 90 s:\n{}\nvalidator {} rejected:\n{}\ntwin metrics:\n{twin_metrics}\n{}\ntwin:\n{}",
                positions.join("\n"),
                honest[0],
                rejected.join("\n"),
                cluster.log(honest[0]),
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
    for &index in &honest {
        let key = cluster.key(index).public_key();
        assert!(
            observer.validators().id_of(&key).is_some(),
            "honest validator {index} was convicted"
        );
    }

    // The time from the first conflicting message each honest validator saw to the commit.
    let mut seconds = Vec::new();
    for &index in &honest {
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
        "{transport:?}: double signing to committed evidence in {:.0} ms (the longest of the honest validators' means, {} of 3 timed it); key {twinned} removed; {} writes acknowledged ({twin_acknowledged} through the twin) and read back",
        longest * 1000.0,
        seconds.len(),
        acknowledged.len()
    );
}
