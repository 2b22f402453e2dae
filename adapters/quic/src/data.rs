//! `pbft data inspect` and `pbft data repair`: what [`pbft_host::data_dir`] found, written for
//! a person (text) or for scripts (JSON), and the warning a cut log needs.

use std::fmt::Write as _;
use std::path::Path;

use pbft_host::config::{FileError, load_network};
use pbft_host::data_dir::{Damage, Health, Inspection, RecordCounts, SegmentState};
use pbft_host::wal::WalOptions;
use serde_json::{Value, json};

/// What an operator must know before a cut log's node starts again.
pub const ROLLBACK_WARNING: &str = "\
warning: the records cut may include statements this validator signed (votes, view changes).
  Started without them, it could sign a conflicting statement for the same slot, which
  convicts its key. Start it with rollback protection on (the default; never with
  `unsafe_skip_rollback_check = true` in its config): before it signs anything, it asks its
  peers what they hold signed by its key and stays out of the views it lost statements in.";

/// The log options to read a node's data dir with: those the node opens its log with
/// ([`WalOptions::for_messages`] of the network's `max_message_bytes`) if `config` (a node's
/// config, or `network.toml`) is given, else the defaults, which are the node's for every
/// network whose `max_message_bytes` is at most 15 MiB.
///
/// # Errors
///
/// The config cannot be read ([`FileError`] names the file and the field).
pub fn wal_options(config: Option<&Path>) -> Result<WalOptions, FileError> {
    match config {
        Some(path) => Ok(WalOptions::for_messages(
            load_network(path)?.core.max_message_bytes,
        )),
        None => Ok(WalOptions::default()),
    }
}

/// The file name of `path`, or the path if it has none.
fn name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// `1 segment`, `2 segments`.
fn plural(count: u64, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        _ => format!("{count} {noun}s"),
    }
}

/// `7 signed, 2 stable`, in the kinds' order; `none` if empty.
fn kinds_text(counts: &RecordCounts) -> String {
    let kinds: Vec<String> = counts
        .kinds
        .iter()
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    match kinds.is_empty() {
        true => "none".to_string(),
        false => kinds.join(", "),
    }
}

/// One line on whether a node can open the log (and, for damage, what to run).
pub fn health_text(health: &Health, dir: &Path) -> String {
    match health {
        Health::Clean => "clean".to_string(),
        Health::TornTail {
            segment,
            offset,
            bytes,
        } => format!(
            "clean, but for a write torn by a crash: {bytes} bytes at byte {offset} of {}, \
             which the node cuts off when it opens the log",
            name(segment)
        ),
        Health::Corrupt(damage) => format!(
            "CORRUPT: {} at byte {}: {}; a node refuses to open this log \
             (`pbft data repair {}` shows what a cut there loses)",
            name(&damage.segment),
            damage.offset,
            damage.reason,
            dir.display()
        ),
    }
}

/// The report `pbft data inspect` prints.
pub fn inspection_text(inspection: &Inspection) -> String {
    let mut out = String::new();
    let dir = &inspection.dir;
    let counts = &inspection.counts;
    let _ = writeln!(out, "data dir           {}", dir.display());
    let _ = writeln!(
        out,
        "wal                {}, {} bytes, {} records a node reads",
        plural(inspection.segments.len() as u64, "segment"),
        inspection.wal_bytes(),
        counts.records
    );
    for segment in &inspection.segments {
        let state = match segment.state {
            SegmentState::Whole => "whole".to_string(),
            SegmentState::TornTail { offset } => format!("torn tail at byte {offset}"),
            SegmentState::Damaged { offset } => format!("DAMAGED at byte {offset}"),
            SegmentState::AfterDamage => "after the damage: not read".to_string(),
        };
        let _ = writeln!(
            out,
            "  {}  {:>12} bytes  {:>9} records  {state}",
            name(&segment.path),
            segment.bytes,
            segment.records,
        );
    }
    let _ = writeln!(out, "records            {}", kinds_text(counts));
    let _ = writeln!(out, "view               {}", counts.view);
    let _ = writeln!(out, "stable checkpoint  seq {}", counts.stable_checkpoint);
    let _ = writeln!(out, "epoch              {}", counts.epoch);
    match &inspection.store {
        None => {
            let _ = writeln!(out, "store              none");
        }
        Some(store) => {
            let _ = writeln!(
                out,
                "store              {}, {} bytes, executed seq {} (durable)",
                name(&store.path),
                store.bytes,
                store.executed
            );
            if let Some(chain) = store.chain {
                let _ = writeln!(out, "chain              {chain}");
            }
            if store.read_from_copy {
                let _ = writeln!(
                    out,
                    "                   (not closed cleanly: read from a repaired copy; the \
                     node repairs the file when it starts)"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "wal health         {}",
        health_text(&inspection.health, dir)
    );
    if let Health::Corrupt(damage) = &inspection.health {
        out.push_str(&lost_text(damage));
    }
    out
}

/// What a cut at `damage` loses, in a few lines.
pub fn lost_text(damage: &Damage) -> String {
    let lost = &damage.lost;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "a cut at the damage loses {} bytes: {} after it ({}), and {} ({} bytes)",
        lost.bytes,
        plural(lost.counts.records, "whole record"),
        kinds_text(&lost.counts),
        plural(lost.damaged, "damaged record"),
        lost.damaged_bytes
    );
    if lost.counts.records > 0 {
        let _ = writeln!(
            out,
            "  {} of them may hold this validator's signatures; they reach view {}",
            lost.counts.with_own_signatures(),
            lost.counts.view
        );
    }
    if !lost.later_segments.is_empty() {
        let names: Vec<String> = lost.later_segments.iter().map(|p| name(p)).collect();
        let _ = writeln!(
            out,
            "  later segments moved aside whole: {}",
            names.join(", ")
        );
    }
    if damage.may_be_a_larger_limit() {
        let _ = writeln!(
            out,
            "  a record longer than the limit read with: if this node's network sets \
             max_message_bytes above 15 MiB, read it with --config NODE_CONFIG"
        );
    }
    out
}

/// What `pbft data repair` shows before it asks: where the damage is and what a cut loses.
pub fn damage_text(damage: &Damage) -> String {
    let mut out = format!(
        "the WAL is damaged: {} at byte {}: {}\n",
        damage.segment.display(),
        damage.offset,
        damage.reason
    );
    out.push_str(&lost_text(damage));
    out
}

fn counts_json(counts: &RecordCounts) -> Value {
    let kinds: serde_json::Map<String, Value> = counts
        .kinds
        .iter()
        .map(|(kind, count)| (kind.name().to_string(), json!(count)))
        .collect();
    json!({
        "records": counts.records,
        "kinds": kinds,
        "view": counts.view,
        "stable_checkpoint": counts.stable_checkpoint,
        "epoch": counts.epoch,
    })
}

/// What `pbft data inspect --json` prints: `dir`; `wal` with `health` (`clean`,
/// `torn_tail` or `corrupt`), `bytes`, each segment (`file`, `bytes`, `records`, `state`,
/// `offset`), the records a node reads (`records`, `kinds`, `view`, `stable_checkpoint`,
/// `epoch`), `torn_tail` and `damage` (`segment`, `offset`, `reason`, and `lost`: the counts
/// of whole records after it, `damaged`, `damaged_bytes`, `bytes`, `later_segments`), each
/// `null` when absent; `store` (`file`, `bytes`, `executed_seq`, `chain`, `read_from_copy`)
/// or `null`. Sizes are bytes, offsets bytes into the segment.
pub fn inspection_json(inspection: &Inspection) -> Value {
    let segments: Vec<Value> = inspection
        .segments
        .iter()
        .map(|segment| {
            let (state, offset) = match segment.state {
                SegmentState::Whole => ("whole", None),
                SegmentState::TornTail { offset } => ("torn_tail", Some(offset)),
                SegmentState::Damaged { offset } => ("damaged", Some(offset)),
                SegmentState::AfterDamage => ("after_damage", None),
            };
            json!({
                "file": segment.path,
                "bytes": segment.bytes,
                "records": segment.records,
                "state": state,
                "offset": offset,
            })
        })
        .collect();
    let (health, torn_tail, damage) = match &inspection.health {
        Health::Clean => ("clean", Value::Null, Value::Null),
        Health::TornTail {
            segment,
            offset,
            bytes,
        } => (
            "torn_tail",
            json!({ "segment": segment, "offset": offset, "bytes": bytes }),
            Value::Null,
        ),
        Health::Corrupt(damage) => ("corrupt", Value::Null, damage_json(damage)),
    };
    let store = inspection.store.as_ref().map_or(Value::Null, |store| {
        json!({
            "file": store.path,
            "bytes": store.bytes,
            "executed_seq": store.executed,
            "chain": store.chain.map(|chain| chain.to_string()),
            "read_from_copy": store.read_from_copy,
        })
    });
    let mut wal = counts_json(&inspection.counts);
    if let Value::Object(fields) = &mut wal {
        fields.insert("health".into(), json!(health));
        fields.insert("bytes".into(), json!(inspection.wal_bytes()));
        fields.insert("segments".into(), Value::Array(segments));
        fields.insert("torn_tail".into(), torn_tail);
        fields.insert("damage".into(), damage);
    }
    json!({ "dir": inspection.dir, "wal": wal, "store": store })
}

/// A damage and what a cut there loses, as [`inspection_json`] writes it.
pub fn damage_json(damage: &Damage) -> Value {
    let lost = &damage.lost;
    let mut counts = counts_json(&lost.counts);
    if let Value::Object(fields) = &mut counts {
        fields.insert("damaged".into(), json!(lost.damaged));
        fields.insert("damaged_bytes".into(), json!(lost.damaged_bytes));
        fields.insert("bytes".into(), json!(lost.bytes));
        fields.insert("later_segments".into(), json!(lost.later_segments));
    }
    json!({
        "segment": damage.segment,
        "offset": damage.offset,
        "reason": damage.reason,
        "lost": counts,
    })
}
