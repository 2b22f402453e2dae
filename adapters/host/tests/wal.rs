//! The write-ahead log on real files with real fsyncs: group commit, torn tails cut at every
//! byte, corruption reported with its offset, rotation and compaction.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use pbft_host::wal::{MAGIC, RECORD_HEADER, Wal, WalError, WalOptions};

fn record(i: usize) -> Vec<u8> {
    format!("record {i} ").repeat(i % 7 + 1).into_bytes()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// A log of `count` records written in one group commit; returns the dir and the segment.
fn written(count: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert!(records.is_empty());
    for i in 0..count {
        wal.append(&record(i)).unwrap();
    }
    wal.sync().unwrap();
    let segment = segment_files(dir.path()).remove(0);
    (dir, segment)
}

/// A log of small segments holding `count` records, each synced on its own (so each round
/// may rotate); returns it with its options.
fn rotated(dir: &Path, segment_bytes: u64, count: usize) -> (Wal, WalOptions) {
    let options = WalOptions {
        segment_bytes,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(dir, options).unwrap();
    for i in 0..count {
        wal.append(&record(i)).unwrap();
        wal.sync().unwrap();
    }
    (wal, options)
}

#[test]
fn records_survive_reopening_and_a_group_commit_costs_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for i in 0..100 {
        wal.append(&record(i)).unwrap();
    }
    assert!(wal.pending_bytes() > 0);
    wal.sync().unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.stats().appends, 100);
    assert_eq!(
        wal.stats().syncs,
        1,
        "one fdatasync for the group; none when idle"
    );
    drop(wal);
    let (mut wal, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(records, (0..100).map(record).collect::<Vec<_>>());
    wal.append(b"after reopening").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(records.len(), 101);
    assert_eq!(records[100], b"after reopening");
}

#[test]
fn a_log_cut_at_every_byte_of_its_last_record_recovers_the_records_before_it() {
    let count = 5;
    let (dir, segment) = written(count);
    let full = fs::read(&segment).unwrap();
    let last_len = RECORD_HEADER + record(count - 1).len();
    let last_start = full.len() - last_len;
    let expected: Vec<Vec<u8>> = (0..count - 1).map(record).collect();
    for cut in last_start..full.len() {
        for zero_filled in [false, true] {
            // The crash kept `cut` bytes; the file system may have extended the file with
            // zeros to its full size.
            let mut bytes = full[..cut].to_vec();
            if zero_filled {
                bytes.resize(full.len(), 0);
            }
            fs::write(&segment, &bytes).unwrap();
            let (mut wal, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            assert_eq!(
                records, expected,
                "cut at byte {cut}, zero-filled: {zero_filled}"
            );
            // The tail is gone from the file, so what comes next follows whole records.
            wal.append(b"next").unwrap();
            wal.sync().unwrap();
            drop(wal);
            let (_, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            assert_eq!(records.len(), count, "cut at byte {cut}");
            assert_eq!(records[count - 1], b"next");
        }
    }
}

#[test]
fn a_flipped_byte_inside_the_log_is_reported_with_its_offset() {
    let count = 6;
    let (dir, segment) = written(count);
    let full = fs::read(&segment).unwrap();
    // The third record: every byte of its header and payload.
    let start: usize = MAGIC.len()
        + (0..2)
            .map(|i| RECORD_HEADER + record(i).len())
            .sum::<usize>();
    let end = start + RECORD_HEADER + record(2).len();
    for at in start..end {
        let mut bytes = full.clone();
        bytes[at] ^= 0x40;
        fs::write(&segment, &bytes).unwrap();
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(WalError::Corrupt {
                segment: bad,
                offset,
                ..
            }) => {
                assert_eq!(bad, segment);
                assert_eq!(offset, start as u64, "flip at byte {at}");
            }
            Err(other) => panic!("flip at byte {at}: {other}"),
            Ok((_, records)) => panic!(
                "flip at byte {at} went unnoticed: {} records",
                records.len()
            ),
        }
    }
    let mut bytes = full.clone();
    bytes[0] = b'X';
    fs::write(&segment, &bytes).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(WalError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn segments_rotate_and_a_torn_record_before_the_last_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, options) = rotated(dir.path(), 256, 40);
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() > 3, "rotated into {} segments", files.len());
    let (_, records) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(records, (0..40).map(record).collect::<Vec<_>>());
    // Cut the first segment's last record: only the last segment may end torn.
    let first = &files[0];
    let len = fs::metadata(first).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert!(matches!(
        Wal::open(dir.path(), options),
        Err(WalError::Corrupt { segment, .. }) if segment == *first
    ));
}

#[test]
fn compaction_keeps_only_the_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, options) = rotated(dir.path(), 512, 50);
    let live = vec![record(48), record(49)];
    wal.compact(&live).unwrap();
    wal.append(b"after").unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(segment_files(dir.path()).len(), 1);
    let (_, records) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(records, vec![record(48), record(49), b"after".to_vec()]);
}

#[test]
fn an_oversized_record_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        max_record_bytes: 16,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    assert!(matches!(
        wal.append(&[7; 17]),
        Err(WalError::RecordTooLarge { len: 17, max: 16 })
    ));
    assert_eq!(wal.pending_bytes(), 0);
}

#[test]
fn the_record_limit_follows_the_largest_message_a_replica_takes() {
    let defaults = WalOptions::default();
    assert_eq!(
        WalOptions::for_messages(4 << 20).max_record_bytes,
        defaults.max_record_bytes,
        "the default message size fits the default limit"
    );
    // A network whose batches go past 16 MiB: its prepared records carry them.
    let options = WalOptions::for_messages(32 << 20);
    assert!(options.max_record_bytes >= (32 << 20) + (1 << 20));
    let big = vec![7u8; 20 << 20];
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), defaults).unwrap();
    assert!(matches!(
        wal.append(&big),
        Err(WalError::RecordTooLarge { .. })
    ));
    drop(wal);
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    wal.append(&big).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, records) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(records, vec![big]);
}

#[test]
fn the_largest_record_a_validator_set_makes_fits_the_log_a_node_opens() {
    // A node opens its log with the limit derived from its config (`node.rs`); the core
    // refuses a set whose largest message (a new view with a full window of prepared
    // certificates, or a full batch with its certificate) does not fit max_message_bytes, and
    // no record is larger than that message (`core/tests/new_view_size.rs` builds them).
    for config in [
        pbft_core::Config::new(pbft_core::ChainId::from_name("wal")),
        pbft_core::Config {
            max_message_bytes: 32 << 20,
            max_batch_bytes: 28 << 20,
            ..pbft_core::Config::new(pbft_core::ChainId::from_name("wal"))
        },
    ] {
        let limit = WalOptions::for_messages(config.max_message_bytes).max_record_bytes as usize;
        let most = config.max_validators();
        for n in [4, 7, 31, most] {
            let largest = config.largest_message_bytes(n);
            assert!(
                largest <= config.max_message_bytes && largest <= limit,
                "n = {n}: {largest} bytes, messages up to {}, records up to {limit}",
                config.max_message_bytes
            );
        }
        assert!(config.largest_message_bytes(most + 1) > config.max_message_bytes);
    }
}
