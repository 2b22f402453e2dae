//! A cluster spread over separate network hosts, with WAN faults between them: each
//! validator runs as a real `pbft node` process in its own network namespace ([`hosts`]),
//! and every packet crosses the test's user-space [`forwarder`], which delays, drops, caps
//! and cuts it. Scenarios, each under a closed-loop load of puts: no faults; 25 ms one-way
//! delay between every pair; 25 ms and 1 % loss; the primary cut off for 5 s, then healed;
//! a minority (one backup) cut off for 5 s; the primary's link capped. Each prints its
//! throughput, p50 and p99 commit latency (at the client: request to f + 1 matching
//! replies), and for the primary's isolation the time from the cut to the first commit of a
//! request sent after it. At the end every acknowledged write is read back.
//!
//! Skipped, saying why, where network namespaces cannot be made (not root, no iproute2).

#[path = "../common/mod.rs"]
mod common;
mod forwarder;
mod hosts;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Launch, VALIDATORS};
use forwarder::{Faults, Forwarder};
use hosts::Hosts;
use pbft_core::Keypair;
use pbft_host::config::load_network;
use pbft_host::kv::OpResult;
use pbft_quic::client::{ClusterClient, Transport};
use tokio::time::Instant;

/// Clients, each with one request outstanding.
const CLIENTS: usize = 32;
const DELAY: Duration = Duration::from_millis(25);
/// How long a client waits for one request (a view change under WAN delay included).
const TIMEOUT: Duration = Duration::from_secs(20);

/// One scenario: its faults, and when (from its start) a cut begins and heals.
struct Scenario {
    name: &'static str,
    faults: Faults,
    /// Validator cut off, with the cut's start and end: `Primary` is found at run time.
    cut: Option<(Cut, Duration, Duration)>,
    duration: Duration,
}

#[derive(Clone, Copy)]
enum Cut {
    Primary,
    Backup,
}

fn wan(delay: Duration) -> Faults {
    Faults {
        delay,
        jitter: Duration::from_millis(2),
        ..Faults::default()
    }
}

fn scenarios() -> Vec<Scenario> {
    let secs = Duration::from_secs;
    vec![
        Scenario {
            name: "no faults (through the forwarder)",
            faults: Faults::default(),
            cut: None,
            duration: secs(5),
        },
        Scenario {
            name: "25 ms one-way delay, ±2 ms jitter",
            faults: wan(DELAY),
            cut: None,
            duration: secs(6),
        },
        Scenario {
            name: "25 ms delay, 1 % loss",
            faults: Faults {
                loss: 0.01,
                ..wan(DELAY)
            },
            cut: None,
            duration: secs(6),
        },
        Scenario {
            name: "25 ms delay, primary cut off 5 s",
            faults: wan(DELAY),
            cut: Some((Cut::Primary, secs(2), secs(7))),
            duration: secs(10),
        },
        Scenario {
            name: "25 ms delay, one backup cut off 5 s",
            faults: wan(DELAY),
            cut: Some((Cut::Backup, secs(1), secs(6))),
            duration: secs(8),
        },
        Scenario {
            name: "25 ms delay, primary's link capped at 2 Mbit/s",
            faults: wan(DELAY),
            cut: None,
            duration: secs(6),
        },
    ]
}

/// What one scenario's load saw.
#[derive(Default)]
struct Outcome {
    acknowledged: Vec<(String, String)>,
    latencies: Vec<Duration>,
    failed: usize,
    /// When each acknowledged request was sent and answered, from the scenario's start.
    answered: Vec<(Duration, Duration)>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().unwrap_or_default()
}

/// Each client puts unique keys for `duration`, one request outstanding each; the clients
/// come back with what they saw.
async fn load(
    clients: Vec<ClusterClient>,
    prefix: &str,
    duration: Duration,
) -> (Vec<ClusterClient>, Outcome) {
    let start = Instant::now();
    let end = start + duration;
    let runs: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, mut client)| {
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut outcome = Outcome::default();
                let mut n = 0;
                while Instant::now() < end {
                    let (key, value) = (format!("{prefix}/{index}/{n}"), format!("v{n}"));
                    n += 1;
                    let sent = Instant::now();
                    match client.execute(common::put(&key, &value), TIMEOUT).await {
                        Ok((result, _))
                            if OpResult::decode(&result.result) == Some(OpResult::Done) =>
                        {
                            outcome.latencies.push(sent.elapsed());
                            outcome.answered.push((sent - start, start.elapsed()));
                            outcome.acknowledged.push((key, value));
                        }
                        _ => outcome.failed += 1,
                    }
                }
                (client, outcome)
            })
        })
        .collect();
    let mut clients = Vec::new();
    let mut all = Outcome::default();
    for run in runs {
        let (client, outcome) = run.await.unwrap();
        clients.push(client);
        all.acknowledged.extend(outcome.acknowledged);
        all.latencies.extend(outcome.latencies);
        all.answered.extend(outcome.answered);
        all.failed += outcome.failed;
    }
    (clients, all)
}

/// Reads back `written` with `clients`, each a share; panics on a value that differs.
async fn read_back(clients: Vec<ClusterClient>, written: &[(String, String)]) {
    let count = clients.len();
    let reads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let share: Vec<(String, String)> =
                written.iter().skip(i).step_by(count).cloned().collect();
            tokio::spawn(async move {
                for (key, value) in share {
                    let (outcome, _) = client.execute(common::get(&key), TIMEOUT).await.unwrap();
                    assert_eq!(
                        OpResult::decode(&outcome.result),
                        Some(OpResult::Value(Some(value.into_bytes()))),
                        "acknowledged write {key} lost"
                    );
                }
            })
        })
        .collect();
    for read in reads {
        read.await.unwrap();
    }
}

/// The primary most validators that answer name.
async fn primary(client: &mut ClusterClient) -> usize {
    let mut votes = [0; VALIDATORS];
    for status in client
        .statuses(Duration::from_secs(2))
        .await
        .into_iter()
        .flatten()
    {
        if let Some(count) = votes.get_mut(status.primary as usize) {
            *count += 1;
        }
    }
    (0..VALIDATORS).max_by_key(|&i| votes[i]).unwrap_or(0)
}

fn run(transport: Transport, net: u8) {
    let hosts = match Hosts::create(VALIDATORS, net) {
        Ok(hosts) => Arc::new(hosts),
        Err(why) => {
            eprintln!("{transport:?}: skipped, network namespaces cannot be made here: {why}");
            return;
        }
    };
    let name = format!("wan-{transport:?}").to_lowercase();
    let mut cluster = Cluster::create((&name, false), transport, |index| Launch {
        wrapper: hosts.exec(index),
        log: "warn",
    });
    // Each node listens on its own host; everyone else reaches it through the forwarder.
    let ports: Vec<u16> = (0..VALIDATORS)
        .map(|index| {
            let config = std::fs::read_to_string(&cluster.testnet.nodes[index]).unwrap();
            config
                .lines()
                .find_map(|line| line.strip_prefix("listen = \"127.0.0.1:"))
                .and_then(|rest| rest.trim_end_matches('"').parse().ok())
                .unwrap()
        })
        .collect();
    let through_forwarder = |text: String| {
        ports.iter().enumerate().fold(text, |text, (index, port)| {
            text.replace(
                &format!("address = \"127.0.0.1:{port}\""),
                &format!("address = \"{}:{port}\"", hosts.forwarded(index)),
            )
        })
    };
    for (index, port) in ports.iter().enumerate() {
        let path = &cluster.testnet.nodes[index];
        let metrics = cluster.testnet.metrics[index];
        let own = hosts.address(index);
        let config = through_forwarder(std::fs::read_to_string(path).unwrap())
            .replace(
                &format!("listen = \"127.0.0.1:{port}\""),
                &format!("listen = \"{own}:{port}\""),
            )
            .replace(&metrics.to_string(), &format!("{own}:{}", metrics.port()));
        std::fs::write(path, config).unwrap();
        cluster.testnet.metrics[index] = (own, metrics.port()).into();
    }
    let network = std::fs::read_to_string(&cluster.testnet.network).unwrap();
    std::fs::write(&cluster.testnet.network, through_forwarder(network)).unwrap();
    cluster.network = load_network(&cluster.testnet.network).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let forwarder = Forwarder::start(Arc::clone(&hosts), &ports, transport == Transport::Tcp).await;
        for index in 0..VALIDATORS {
            cluster.spawn(index);
        }
        // Ready once every node serves its metrics and a write commits (each try with a new
        // client: a client connects to each validator once, so one made before the nodes
        // listened would never recover).
        let ready = Instant::now() + Duration::from_secs(90);
        while (0..VALIDATORS).any(|i| common::scrape(cluster.testnet.metrics[i]).is_empty()) {
            assert!(Instant::now() < ready, "the nodes never served their metrics");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let connect = |seed: usize| {
            let key = Keypair::from_seed(&[seed as u8 + 100; 32]);
            ClusterClient::connect(transport, &cluster.network, key).unwrap()
        };
        loop {
            let tried = connect(CLIENTS)
                .execute(common::put("ready", "1"), Duration::from_secs(5))
                .await;
            match tried {
                Ok(_) => break,
                Err(err) if Instant::now() > ready => {
                    let logs: Vec<String> = (0..VALIDATORS).map(|i| cluster.log(i)).collect();
                    panic!("the cluster never committed a write ({err}); node logs:\n{}", logs.concat());
                }
                Err(_) => {}
            }
        }
        let mut clients: Vec<ClusterClient> = (0..CLIENTS).map(connect).collect();
        println!("{transport:?}: 4 validators on separate hosts, {CLIENTS} clients, puts of a unique key");
        println!(
            "{:<48} {:>9} {:>9} {:>9} {:>7}",
            "scenario", "ops/s", "p50 ms", "p99 ms", "failed"
        );
        let mut acknowledged = Vec::new();
        for (number, scenario) in scenarios().into_iter().enumerate() {
            let leader = primary(&mut clients[0]).await;
            let mut faults = scenario.faults.clone();
            if scenario.name.contains("capped") {
                faults.cap = Some((leader, 250_000));
            }
            forwarder.set(faults.clone());
            let cut = scenario.cut.map(|(cut, from, to)| {
                let host = match cut {
                    Cut::Primary => leader,
                    Cut::Backup => (leader + VALIDATORS - 1) % VALIDATORS,
                };
                (host, from, to)
            });
            let controller = async {
                if let Some((host, from, to)) = cut {
                    tokio::time::sleep(from).await;
                    forwarder.set(Faults {
                        isolated: vec![host],
                        ..faults.clone()
                    });
                    tokio::time::sleep(to - from).await;
                    forwarder.set(faults.clone());
                }
            };
            let prefix = format!("s{number}");
            let (back, outcome) = tokio::join!(load(clients, &prefix, scenario.duration), controller)
                .0;
            clients = back;
            let mut latencies = outcome.latencies.clone();
            latencies.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:<48} {:>9.0} {:>9.1} {:>9.1} {:>7}",
                scenario.name,
                outcome.acknowledged.len() as f64 / scenario.duration.as_secs_f64(),
                ms(percentile(&latencies, 0.50)),
                ms(percentile(&latencies, 0.99)),
                outcome.failed,
            );
            if let Some((host, from, _)) = cut {
                // Figures, not verdicts (timing is measured, never asserted): how long the
                // cut stopped commits, and the first commit of a request sent after it.
                let first_after = |sent_after: bool| {
                    let answered = outcome.answered.iter();
                    answered
                        .filter(|(sent, answered)| *answered >= from && (!sent_after || *sent >= from))
                        .map(|(_, answered)| *answered - from)
                        .min()
                        .map_or("none within the run".into(), |d| format!("{:.0} ms", ms(d)))
                };
                println!(
                    "    validator {host} cut off: first commit after the cut {}; of a request sent after it {}",
                    first_after(false),
                    first_after(true)
                );
            }
            assert!(
                !outcome.acknowledged.is_empty(),
                "{}: no write committed",
                scenario.name
            );
            acknowledged.extend(outcome.acknowledged);
        }
        // Every acknowledged write reads back, over perfect links.
        forwarder.set(Faults::default());
        let total = acknowledged.len();
        read_back(clients, &acknowledged).await;
        println!("{transport:?}: all {total} acknowledged writes read back");
    });
    drop(cluster);
}

#[test]
fn a_cluster_on_separate_hosts_keeps_every_acknowledged_write_under_wan_faults() {
    // One transport after the other: two clusters at once would share the two cores.
    run(Transport::Quic, 1);
    run(Transport::Tcp, 2);
}
