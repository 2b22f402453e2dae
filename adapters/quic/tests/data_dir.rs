//! `pbft data inspect` and `pbft data repair` on a real validator's data dir, through the
//! real binary: a validator that ran and stopped is inspected clean; a byte flipped in the
//! middle of its log makes inspect fail and say where; repair without --yes changes nothing
//! and fails; with --yes it cuts the log at the damage, keeping a copy, and the validator
//! starts again and catches up with the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pbft_host::kv::OpResult;
use pbft_host::wal::{MAGIC, RECORD_HEADER};
use pbft_quic::client::Transport;
use serde_json::Value;

#[allow(unused_macros)] // This file runs over QUIC only: the data dir is the same on TCP.
mod common;
use common::{Cluster, put};

const TIMEOUT: Duration = Duration::from_secs(20);
/// The validator whose data dir is inspected and repaired (a backup: the cluster commits
/// while it is down).
const INSPECTED: usize = 2;

/// Runs `pbft` with `args`, with no terminal on standard input (so repair never prompts).
fn pbft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbft"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn inspect_json(dir: &str) -> (Output, Value) {
    let output = pbft(&["data", "inspect", dir, "--json"]);
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", text(&output.stdout)));
    (output, json)
}

/// Every file under `dir` with its bytes: what a refused repair must leave as it was.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => pending.push(path),
                false => {
                    files.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
    }
    files
}

/// Where each record of a segment's bytes starts.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = MAGIC.len();
    while at + RECORD_HEADER <= bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += RECORD_HEADER + len;
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_whose_log_was_damaged_mid_way_is_repaired_and_starts_again() {
    let mut cluster = Cluster::start("data-dir", Transport::Quic);
    let mut client = cluster.client(61);
    for n in 0..30 {
        let (outcome, _) = client
            .execute(put(&format!("k{n}"), "v"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
    }
    let data_dir = cluster.data_dir(INSPECTED);
    let dir = data_dir.to_str().unwrap().to_string();

    // While it runs, the data dir is refused: a look could read a log half written.
    let busy = pbft(&["data", "inspect", &dir]);
    assert!(!busy.status.success());
    assert!(
        text(&busy.stderr).contains("a node is running"),
        "{}",
        text(&busy.stderr)
    );

    assert!(
        cluster.stop(INSPECTED),
        "the validator did not stop cleanly"
    );
    let before = snapshot(&data_dir);
    let clean = pbft(&["data", "inspect", &dir]);
    let report = text(&clean.stdout);
    assert!(clean.status.success(), "{report}{}", text(&clean.stderr));
    println!("{report}");
    assert!(report.contains("wal health         clean"), "{report}");
    assert_eq!(snapshot(&data_dir), before, "inspect changed the data dir");
    let (_, json) = inspect_json(&dir);
    assert_eq!(json["wal"]["health"], "clean");
    let records = json["wal"]["records"].as_u64().unwrap();
    assert!(
        json["wal"]["kinds"]["committed"].as_u64().unwrap() >= 30,
        "{json}"
    );
    assert!(
        json["store"]["executed_seq"].as_u64().unwrap() >= 30,
        "{json}"
    );
    assert!(json["store"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["store"]["read_from_copy"], false);

    // A byte flipped in a record with records after it, in the last segment.
    let segments = json["wal"]["segments"].as_array().unwrap();
    let segment = PathBuf::from(segments.last().unwrap()["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&segment).unwrap();
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() >= 3, "{} records", offsets.len());
    let damaged = offsets[offsets.len() / 2];
    bytes[damaged + RECORD_HEADER + 1] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let after_damage = offsets.len() - offsets.len() / 2 - 1;

    let (corrupt, json) = inspect_json(&dir);
    assert!(!corrupt.status.success(), "inspect passed a corrupt log");
    assert_eq!(json["wal"]["health"], "corrupt");
    let damage = &json["wal"]["damage"];
    assert_eq!(damage["offset"].as_u64().unwrap(), damaged as u64);
    assert_eq!(
        damage["lost"]["records"].as_u64().unwrap(),
        after_damage as u64
    );
    assert_eq!(damage["lost"]["damaged"].as_u64().unwrap(), 1);
    let kept = json["wal"]["records"].as_u64().unwrap();
    assert_eq!(kept + after_damage as u64 + 1, records);
    let said = pbft(&["data", "inspect", &dir]);
    assert!(!said.status.success());
    assert!(
        text(&said.stdout).contains("CORRUPT"),
        "{}",
        text(&said.stdout)
    );

    // The node will not start on it: it stops at once, naming the damage.
    let damaged_before = snapshot(&data_dir);
    cluster.spawn(INSPECTED);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log(INSPECTED).contains("corrupt") {
        assert!(Instant::now() < deadline, "{}", cluster.log(INSPECTED));
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(INSPECTED);

    // Without --yes: what it would lose, and nothing changed.
    let refused = pbft(&["data", "repair", &dir]);
    assert!(!refused.status.success());
    let shown = text(&refused.stdout);
    assert!(shown.contains(&format!("at byte {damaged}")), "{shown}");
    assert!(
        shown.contains(&format!("{after_damage} whole record")),
        "{shown}"
    );
    assert!(
        text(&refused.stderr).contains("--yes"),
        "{}",
        text(&refused.stderr)
    );
    assert!(text(&refused.stderr).contains("rollback protection"));
    assert_eq!(
        snapshot(&data_dir),
        damaged_before,
        "a refused repair changed the dir"
    );

    // With --yes: cut, with a copy of the damaged segment as it was.
    let repaired = pbft(&["data", "repair", &dir, "--yes"]);
    let said = text(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "{said}{}",
        text(&repaired.stderr)
    );
    println!("{said}");
    let backup = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("damaged-")
        })
        .expect("a backup directory");
    assert_eq!(
        std::fs::read(backup.join(segment.file_name().unwrap())).unwrap(),
        bytes
    );
    let (clean, json) = inspect_json(&dir);
    assert!(clean.status.success());
    assert_eq!(json["wal"]["health"], "clean");
    assert_eq!(json["wal"]["records"].as_u64().unwrap(), kept);

    // It starts again and catches up with what the cluster committed meanwhile (and goes
    // on committing: a validator that lags learns it from the traffic).
    for n in 0..10 {
        client
            .execute(put(&format!("meanwhile{n}"), "v"), TIMEOUT)
            .await
            .unwrap();
    }
    cluster.spawn(INSPECTED);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        let target = cluster.metric(0, "pbft_executed_seq");
        let reached = cluster.metric(INSPECTED, "pbft_executed_seq");
        if reached >= target && reached > 0 {
            println!(
                "the repaired validator caught up to seq {reached} (its log kept {kept} of {records} records)"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the repaired validator is at seq {reached}, the cluster at {target}:\n{}",
            cluster.log(INSPECTED)
        );
        client
            .execute(put(&format!("after{n}"), "v"), TIMEOUT)
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
