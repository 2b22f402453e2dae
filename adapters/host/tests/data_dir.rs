//! `pbft data inspect` and `pbft data repair` on real files: a look changes nothing; a log
//! damaged in its middle is reported with what a cut would lose, left alone without the
//! operator's yes, and with it cut at the damage after a copy was kept, so that the log
//! opens again with every record before the damage.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pbft_core::{ChainId, Digest, Keypair, Phase, Record, ReplicaId, StableCheckpoint, Vote};
use pbft_host::data_dir::{
    self, DataDirError, Health, Inspection, RecordKind, Repair, SegmentState,
};
use pbft_host::node::LOCK_FILE;
use pbft_host::store::Store;
use pbft_host::wal::{MAGIC, RECORD_HEADER, Wal, WalError, WalOptions};

/// Record `i` of a test log: a prepare vote in view `i / 4` at seq `i + 1`, with every fifth
/// a stable checkpoint at seq `i` instead.
fn record(i: usize) -> Vec<u8> {
    let record = match i % 5 {
        4 => Record::Stable(StableCheckpoint {
            seq: i as u64,
            digest: Digest([i as u8; 32]),
            signatures: Vec::new(),
        }),
        _ => Record::Signed(Vote::new(
            &ChainId::from_name("data"),
            0,
            Phase::Prepare,
            ((i / 4) as u64, i as u64 + 1),
            Digest([i as u8; 32]),
            ReplicaId(0),
            &Keypair::from_seed(&[7; 32]),
        )),
    };
    record.encode()
}

fn kind(i: usize) -> RecordKind {
    match i % 5 {
        4 => RecordKind::Stable,
        _ => RecordKind::Signed,
    }
}

fn kinds(range: std::ops::Range<usize>) -> BTreeMap<RecordKind, u64> {
    let mut kinds = BTreeMap::new();
    for i in range {
        *kinds.entry(kind(i)).or_default() += 1;
    }
    kinds
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

/// Every file under `dir` with its bytes and modification time: what must not change.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let metadata = fs::metadata(&path).unwrap();
            match metadata.is_dir() {
                true => pending.push(path),
                false => {
                    let bytes = fs::read(&path).unwrap();
                    files.insert(path, (bytes, metadata.modified().unwrap()));
                }
            }
        }
    }
    files
}

/// A data dir whose log holds `count` records in one segment, with a store bound to a
/// chain and closed cleanly; returns it and the segment.
fn data_dir(count: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for i in 0..count {
        wal.append(&record(i)).unwrap();
    }
    wal.sync().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    store.bind_chain(&ChainId::from_name("data")).unwrap();
    drop(store);
    let segment = segment_files(dir.path()).remove(0);
    (dir, segment)
}

/// Where record `i` of a single-segment log starts.
fn offset_of(i: usize) -> usize {
    MAGIC.len()
        + (0..i)
            .map(|j| RECORD_HEADER + record(j).len())
            .sum::<usize>()
}

fn inspect(dir: &Path) -> Inspection {
    data_dir::inspect(dir, WalOptions::default()).unwrap()
}

#[test]
fn a_clean_data_dir_is_inspected_without_a_byte_changed() {
    let (dir, segment) = data_dir(12);
    let before = snapshot(dir.path());
    let seen = inspect(dir.path());
    assert_eq!(snapshot(dir.path()), before, "the look wrote something");
    assert_eq!(seen.health, Health::Clean);
    assert!(!seen.corrupt());
    assert_eq!(seen.segments.len(), 1);
    assert_eq!(seen.segments[0].path, segment);
    assert_eq!(seen.segments[0].records, 12);
    assert_eq!(seen.segments[0].state, SegmentState::Whole);
    assert_eq!(seen.wal_bytes(), fs::metadata(&segment).unwrap().len());
    assert_eq!(seen.counts.records, 12);
    assert_eq!(seen.counts.kinds, kinds(0..12));
    // Votes in views 0, 1 and 2 (record 11 is in view 2); stable checkpoints at 4 and 9.
    assert_eq!(seen.counts.view, 2);
    assert_eq!(seen.counts.stable_checkpoint, 9);
    let store = seen.store.expect("the data dir has a store");
    assert_eq!(store.executed, 0);
    assert_eq!(store.chain, Some(ChainId::from_name("data").0));
    assert!(store.bytes > 0);
    assert!(!store.read_from_copy);
}

#[test]
fn a_store_not_closed_cleanly_is_read_from_a_copy_and_left_as_it_was() {
    let (dir, _) = data_dir(3);
    // A node that stops on an error leaves its store as a crash would.
    let (store, _) = Store::open(dir.path()).unwrap();
    store.abandon();
    drop(store);
    let before = snapshot(dir.path());
    let seen = inspect(dir.path());
    assert_eq!(
        snapshot(dir.path()),
        before,
        "the look repaired the store in place"
    );
    let store = seen.store.expect("the data dir has a store");
    assert!(store.read_from_copy);
    assert_eq!(store.chain, Some(ChainId::from_name("data").0));
    // The node still opens it (and repairs it itself).
    Store::open(dir.path()).unwrap();
}

#[test]
fn every_flipped_byte_of_a_record_mid_log_is_reported_with_what_a_cut_loses() {
    let count = 6;
    let (dir, segment) = data_dir(count);
    let full = fs::read(&segment).unwrap();
    let (start, end) = (offset_of(2), offset_of(3));
    for at in start..end {
        let mut bytes = full.clone();
        bytes[at] ^= 0x40;
        fs::write(&segment, &bytes).unwrap();
        let seen = inspect(dir.path());
        let Health::Corrupt(damage) = &seen.health else {
            panic!("flip at byte {at}: {:?}", seen.health);
        };
        assert_eq!(damage.segment, segment);
        assert_eq!(damage.offset, start as u64, "flip at byte {at}");
        // The node reads records 0 and 1; 2 is damaged; 3, 4 and 5 are whole but cut.
        assert_eq!(seen.counts.records, 2);
        assert_eq!(damage.lost.damaged, 1, "flip at byte {at}");
        assert_eq!(damage.lost.damaged_bytes, (end - start) as u64);
        assert_eq!(damage.lost.counts.records, 3, "flip at byte {at}");
        assert_eq!(damage.lost.counts.kinds, kinds(3..count));
        assert_eq!(damage.lost.bytes, (full.len() - start) as u64);
        assert!(damage.lost.later_segments.is_empty());
        assert_eq!(
            seen.segments[0].state,
            SegmentState::Damaged {
                offset: start as u64
            }
        );
        // What the node meets is what the look said.
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, start as u64),
            Err(other) => panic!("flip at byte {at}: {other}"),
            Ok(_) => panic!("flip at byte {at}: the log opened"),
        }
    }
}

#[test]
fn repair_without_confirmation_changes_nothing() {
    let (dir, segment) = data_dir(6);
    let mut bytes = fs::read(&segment).unwrap();
    bytes[offset_of(2) + RECORD_HEADER + 3] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();
    let before = snapshot(dir.path());
    let mut shown = None;
    let outcome = data_dir::repair(dir.path(), WalOptions::default(), |damage| {
        shown = Some(damage.clone());
        false
    })
    .unwrap();
    let shown = shown.expect("the damage was shown before asking");
    assert_eq!(outcome, Repair::Declined(shown));
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a declined repair changed the dir"
    );
    assert!(Wal::open(dir.path(), WalOptions::default()).is_err());
}

#[test]
fn a_confirmed_repair_keeps_a_copy_and_cuts_the_log_at_the_damage() {
    let count = 6;
    let (dir, segment) = data_dir(count);
    let mut bytes = fs::read(&segment).unwrap();
    bytes[offset_of(2) + 5] ^= 0x10;
    fs::write(&segment, &bytes).unwrap();
    let reported = inspect(dir.path());
    let Health::Corrupt(damage) = reported.health.clone() else {
        panic!("{:?}", reported.health);
    };
    let outcome = data_dir::repair(dir.path(), WalOptions::default(), |shown| {
        assert_eq!(*shown, damage, "the repair cuts what the look reported");
        true
    })
    .unwrap();
    let Repair::Repaired {
        damage: cut,
        backup,
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(cut, damage);
    assert!(backup.starts_with(dir.path()));
    // The damaged segment as it was, byte for byte, and a note of what was cut.
    assert_eq!(
        fs::read(backup.join(segment.file_name().unwrap())).unwrap(),
        bytes
    );
    let note = fs::read_to_string(backup.join("REPAIR.txt")).unwrap();
    assert!(note.contains("3 whole records"), "{note}");
    // The log opens, with exactly the records before the damage; the count lost is the
    // count reported.
    let (mut wal, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(records, (0..2).map(record).collect::<Vec<_>>());
    let lost = damage.lost.counts.records + damage.lost.damaged;
    assert_eq!(records.len() as u64 + lost, count as u64);
    wal.append(&record(9)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let after = inspect(dir.path());
    assert_eq!(after.health, Health::Clean);
    assert_eq!(after.counts.records, 3);
    // Nothing left to repair.
    let again = data_dir::repair(dir.path(), WalOptions::default(), |_| true).unwrap();
    assert_eq!(again, Repair::NothingToRepair(Health::Clean));
}

#[test]
fn a_torn_record_before_the_last_segment_is_cut_with_the_later_segments_moved_aside() {
    let count = 40;
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 1024,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    for i in 0..count {
        wal.append(&record(i)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() > 3, "rotated into {} segments", files.len());
    let originals: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
    let first_records = inspect(dir.path()).segments[0].records as usize;
    // Cut the first segment's last record: only the last segment may end torn.
    let first = &files[0];
    let len = fs::metadata(first).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let torn_bytes = fs::read(first).unwrap();
    let seen = data_dir::inspect(dir.path(), options).unwrap();
    let Health::Corrupt(damage) = &seen.health else {
        panic!("{:?}", seen.health);
    };
    assert_eq!(damage.segment, *first);
    assert_eq!(damage.lost.later_segments, files[1..].to_vec());
    assert_eq!(damage.lost.damaged, 1);
    let kept = first_records - 1;
    assert_eq!(seen.counts.records as usize, kept);
    assert_eq!(damage.lost.counts.records as usize, count - kept - 1);
    assert_eq!(damage.lost.counts.kinds, kinds(kept + 1..count));
    let later_bytes: u64 = originals[1..].iter().map(|b| b.len() as u64).sum();
    assert_eq!(damage.lost.bytes, later_bytes + len - 3 - damage.offset);
    assert!(
        seen.segments[1..]
            .iter()
            .all(|s| s.state == SegmentState::AfterDamage)
    );

    let Repair::Repaired { backup, .. } = data_dir::repair(dir.path(), options, |_| true).unwrap()
    else {
        panic!("not repaired");
    };
    assert_eq!(segment_files(dir.path()), vec![first.clone()]);
    assert_eq!(
        fs::read(backup.join(first.file_name().unwrap())).unwrap(),
        torn_bytes
    );
    for (file, original) in files[1..].iter().zip(&originals[1..]) {
        let moved = backup.join(file.file_name().unwrap());
        assert_eq!(&fs::read(moved).unwrap(), original, "{}", file.display());
    }
    let (_, records) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(records, (0..kept).map(record).collect::<Vec<_>>());
    let lost = damage.lost.counts.records + damage.lost.damaged;
    assert_eq!(records.len() as u64 + lost, count as u64);
    assert_eq!(
        data_dir::inspect(dir.path(), options).unwrap().health,
        Health::Clean
    );
}

#[test]
fn a_damaged_magic_is_cut_to_an_empty_segment() {
    let (dir, segment) = data_dir(4);
    let mut bytes = fs::read(&segment).unwrap();
    bytes[0] = b'X';
    fs::write(&segment, &bytes).unwrap();
    let Health::Corrupt(damage) = inspect(dir.path()).health else {
        panic!("a bad magic is corruption");
    };
    assert_eq!(damage.offset, 0);
    assert_eq!(damage.lost.counts.records, 4);
    assert_eq!(damage.lost.damaged, 0, "a magic is no record");
    data_dir::repair(dir.path(), WalOptions::default(), |_| true).unwrap();
    assert_eq!(fs::read(&segment).unwrap(), MAGIC);
    assert_eq!(inspect(dir.path()).health, Health::Clean);
    let (_, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert!(records.is_empty());
}

#[test]
fn a_torn_tail_is_no_damage_and_repair_leaves_it_to_the_node() {
    let (dir, segment) = data_dir(5);
    let len = fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 2)
        .unwrap();
    let torn_at = offset_of(4) as u64;
    let seen = inspect(dir.path());
    assert_eq!(
        seen.health,
        Health::TornTail {
            segment: segment.clone(),
            offset: torn_at,
            bytes: len - 2 - torn_at,
        }
    );
    assert!(!seen.corrupt());
    let before = snapshot(dir.path());
    let outcome = data_dir::repair(dir.path(), WalOptions::default(), |_| {
        panic!("nothing to confirm")
    })
    .unwrap();
    assert_eq!(outcome, Repair::NothingToRepair(seen.health));
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_data_dir_a_node_holds_is_neither_inspected_nor_repaired() {
    let (dir, _) = data_dir(2);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.path().join(LOCK_FILE))
        .unwrap();
    lock.try_lock().unwrap();
    assert!(matches!(
        data_dir::inspect(dir.path(), WalOptions::default()),
        Err(DataDirError::InUse(_))
    ));
    assert!(matches!(
        data_dir::repair(dir.path(), WalOptions::default(), |_| true),
        Err(DataDirError::InUse(_))
    ));
    lock.unlock().unwrap();
    inspect(dir.path());
}

#[test]
fn a_path_that_is_no_data_dir_is_refused_with_what_it_is() {
    let empty = tempfile::tempdir().unwrap();
    let message = data_dir::inspect(empty.path(), WalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("not a validator's data dir"), "{message}");
    let missing = empty.path().join("nowhere");
    assert!(matches!(
        data_dir::inspect(&missing, WalOptions::default()),
        Err(DataDirError::NotFound(_))
    ));
}
