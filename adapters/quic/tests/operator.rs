//! What an operator runs against a live cluster, through the real `pbft` binary: every
//! refused request ends with a reason, not a timeout; a client key whose numbers ran ahead of
//! its clock is renumbered; values travel from files and standard input and back, byte for
//! byte; and `pbft status` shows the cluster and fails as a health check when it cannot
//! commit.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pbft_core::Keypair;
use pbft_quic::client::{ClientFailure, ClusterClient, Transport};

#[macro_use]
mod common;
use common::{Cluster, put};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `pbft` with `args` (and `stdin`), and says how long it took.
fn pbft(args: &[&str], stdin: Option<&[u8]>) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbft"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    (output, started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn an_operator_gets_answers_not_timeouts(transport: Transport) {
    let mut cluster = Cluster::start("operator", transport);
    let flag = match transport {
        Transport::Quic => "quic",
        Transport::Tcp => "tcp",
    };
    let network = cluster.testnet.network.to_str().unwrap().to_string();
    let dir = cluster.dir.path().to_path_buf();
    let key = dir.join("client.key");
    let key_arg = key.to_str().unwrap();
    let client = |op: &[&str], stdin: Option<&[u8]>| {
        let mut args = vec![
            "client",
            "--config",
            &network,
            "--transport",
            flag,
            "--key-file",
            key_arg,
        ];
        args.extend_from_slice(op);
        pbft(&args, stdin)
    };
    assert!(pbft(&["keygen", key_arg], None).0.status.success());

    // The key's numbers ran a day ahead once (a clock set wrong, on this machine or
    // another that kept the numbering file); then the numbering file is gone and the
    // clock is right: the spent numbers are learnt from the validators, not waited out.
    let (first, _) = client(&["put", "clock", "ahead"], None);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let numbering = dir.join("client.key.seq");
    let kept: u64 = std::fs::read_to_string(&numbering)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::write(&numbering, format!("{}\n", kept + 86_400_000_000)).unwrap();
    let (ahead, _) = client(&["put", "clock", "a day ahead"], None);
    assert!(ahead.status.success(), "{}", text(&ahead.stderr));
    std::fs::remove_file(&numbering).unwrap();
    let (behind, took) = client(&["put", "clock", "right again"], None);
    assert!(behind.status.success(), "{}", text(&behind.stderr));
    println!("{flag}: a put under spent numbers renumbered and committed in {took:?}");
    let (read, _) = client(&["get", "clock"], None);
    assert_eq!(text(&read.stdout), "right again\n");

    // Over the network's limit: refused before anything is sent, and says which limit.
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![0xa5; 120_000]).unwrap();
    let (oversized, took) = client(&["put", "big", "--value-file", big.to_str().unwrap()], None);
    assert!(!oversized.status.success());
    let said = text(&oversized.stderr);
    assert!(said.contains("max_request_bytes"), "{said}");
    println!(
        "{flag}: a 120,000-byte value refused in {took:?}: {}",
        said.trim()
    );

    // Binary values from standard input, back into a file and through a pipe, unchanged.
    let value: Vec<u8> = (0..5_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let (stored, _) = client(&["put", "bin", "--value-file", "-"], Some(&value));
    assert!(stored.status.success(), "{}", text(&stored.stderr));
    let out = dir.join("out.bin");
    let (fetched, _) = client(&["get", "bin", "--output", out.to_str().unwrap()], None);
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), value);
    let (piped, _) = client(&["get", "bin"], None);
    assert_eq!(piped.stdout, value);
    let (dashed, _) = client(&["get", "bin", "--output", "-"], None);
    assert_eq!(dashed.stdout, value, "`--output -` is standard output");
    assert!(!Path::new("-").exists() && !dir.join("-").exists());
    let missing = dir.join("missing.key");
    let (no_key, _) = pbft(
        &[
            "client",
            "--config",
            &network,
            "--key-file",
            missing.to_str().unwrap(),
            "get",
            "bin",
        ],
        None,
    );
    assert!(!no_key.status.success());
    assert!(
        text(&no_key.stderr).contains("make one with `pbft keygen"),
        "{}",
        text(&no_key.stderr)
    );
    let (absent, _) = client(&["get", "never-written"], None);
    assert!(!absent.status.success());
    assert!(text(&absent.stderr).contains("is absent"));

    key_in_use_in_two_places(&cluster).await;

    // The cluster at a glance, for scripts.
    let status = |json: bool| {
        let mut args = vec!["status", "--config", &network, "--transport", flag];
        if json {
            args.push("--json");
        }
        pbft(&args, None)
    };
    let (healthy, took) = status(true);
    assert!(healthy.status.success(), "{}", text(&healthy.stderr));
    let report: serde_json::Value = serde_json::from_slice(&healthy.stdout).unwrap();
    assert_eq!(report["healthy"], true);
    assert_eq!(report["answering"], 4);
    let rows = report["rows"].as_array().unwrap();
    let primaries = rows
        .iter()
        .filter(|row| row["answer"]["role"] == "primary")
        .count();
    assert_eq!(primaries, 1, "{report}");
    assert!(
        rows.iter()
            .all(|row| row["answer"]["executed"].as_u64() > Some(0))
    );
    println!("{flag}: status of a healthy cluster in {took:?}");

    // Two of four down: no quorum, and the health check says so with its exit code.
    cluster.kill(2);
    cluster.kill(3);
    let (down, took) = status(false);
    assert!(!down.status.success());
    let table = text(&down.stdout);
    assert!(
        table.contains("UNHEALTHY: only 2 of the set's 4 validators answer"),
        "{table}"
    );
    assert_eq!(table.matches("no answer").count(), 2, "{table}");
    println!("{flag}: status of a cluster without a quorum in {took:?}:\n{table}");

    // A validator restarted with one peer left to ask stays in rollback protection (it
    // needs f + 1 answers before it signs again), and status says so rather than showing
    // a backup that does nothing.
    cluster.kill(1);
    cluster.spawn(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (recovering, report) = loop {
        let (answer, _) = status(true);
        let report: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
        let role = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["answer"]["id"] == 2)
            .map(|row| row["answer"]["role"].clone());
        if role.is_some() || std::time::Instant::now() > deadline {
            break (role, report);
        }
    };
    assert_eq!(recovering, Some("recovering".into()), "{report}");
    let (table, _) = status(false);
    assert!(
        text(&table.stdout).contains("signs nothing until they answer"),
        "{}",
        text(&table.stdout)
    );
}

/// One key used by two clients at once: the second is renumbered above the first's spent
/// numbers, and the first then finds its next number taken and says the key is in use
/// elsewhere, instead of timing out.
async fn key_in_use_in_two_places(cluster: &Cluster) {
    let first_seq = pbft_quic::client::first_client_seq();
    let connect = |first: u64| {
        ClusterClient::connect_numbered(
            cluster.transport,
            &cluster.network,
            Keypair::from_seed(&[0x77; 32]),
            first,
        )
        .unwrap()
    };
    let mut here = connect(first_seq);
    let mut there = connect(first_seq - 1_000);
    here.execute(put("shared", "here"), TIMEOUT).await.unwrap();
    there
        .execute(put("shared", "there"), TIMEOUT)
        .await
        .unwrap();
    let started = Instant::now();
    let failure = here.execute(put("shared", "here again"), TIMEOUT).await;
    let Err(failure) = failure else {
        panic!("the number the other client took executed again: {failure:?}");
    };
    assert!(
        matches!(
            failure,
            ClientFailure::Rejected { .. } | ClientFailure::KeyInUse { .. }
        ),
        "{failure}"
    );
    assert!(
        failure.to_string().contains("in use by another client"),
        "{failure}"
    );
    println!(
        "a key in use in two places: told in {:?}: {failure}",
        started.elapsed()
    );
}

over_both_transports! {
    quic_an_operator_gets_answers_not_timeouts,
    tcp_an_operator_gets_answers_not_timeouts
        => an_operator_gets_answers_not_timeouts;
}
