//! A stopped validator's data dir as an operator sees it (`pbft data inspect`): its log's
//! segments, records by kind, view and stable checkpoint, its store's executed seq, and
//! whether the log is whole; and the one repair (`pbft data repair`): a log damaged in its
//! middle cut at the damage, once the operator agreed, after a copy of what is cut was kept.
//!
//! Both judge the log with the same code [`Wal::open`](crate::wal::Wal::open) does
//! ([`crate::wal`]'s segment scan), so what an inspection calls clean, torn or corrupt is
//! what a node opening the log meets. Both take the data dir's lock ([`LOCK_FILE`]): neither
//! reads or cuts a log a running node writes, and no node starts while they do.
//!
//! What a cut costs: the records after the damage are gone from the log, and they may
//! include statements this validator signed (votes, view changes). A node that restarts
//! without them could sign a conflicting statement for the same slot, which is evidence
//! against its key. Rollback protection (on unless the node's config sets
//! `unsafe_skip_rollback_check`) asks the peers what they hold signed by the key before
//! the node signs anything, and keeps it out of the views it lost statements in.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use pbft_core::{Phase, Record};

use crate::node::LOCK_FILE;
use crate::store::{STORE_FILE, Store, StoreError, StoreSummary};
use crate::wal::{
    self, MAGIC, RECORD_HEADER, SegmentEnd, WalError, WalOptions, record_at, scan_segment,
};

/// Why a data dir cannot be inspected or repaired.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The path is not a directory.
    #[error("{}: no such directory", .0.display())]
    NotFound(PathBuf),
    /// The directory holds neither a log segment nor a store: not a validator's data dir
    /// (the config's `data_dir`, not the directory of the config).
    #[error(
        "{}: no WAL segment (*.wal) and no {STORE_FILE}: not a validator's data dir (give \
         the `data_dir` its config names)",
        .0.display()
    )]
    NotADataDir(PathBuf),
    /// A running node holds the data dir's lock.
    #[error(
        "{}: a node is running on this data dir (it holds {LOCK_FILE}); stop it first",
        .0.display()
    )]
    InUse(PathBuf),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The log's directory cannot be listed or synced.
    #[error("{0}")]
    Wal(#[from] WalError),
    /// The store cannot be read.
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The kinds of log records ([`Record`]'s variants), and records that check out but do not
/// decode (written by another version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    /// [`Record::Signed`]: a vote this validator signed.
    Signed,
    /// [`Record::Prepared`]: a prepared certificate it assembled.
    Prepared,
    /// [`Record::Accepted`]: a pre-prepare it accepted, with its batch.
    Accepted,
    /// [`Record::Stable`]: a checkpoint that became stable.
    Stable,
    /// [`Record::ViewChange`]: a view change it signed.
    ViewChange,
    /// [`Record::NewView`]: a new view it entered.
    NewView,
    /// [`Record::Committed`]: a batch's QC, the redo record of its execution.
    Committed,
    /// [`Record::Scheduled`]: a change of the validator set a batch scheduled.
    Scheduled,
    /// [`Record::EpochStarted`]: an epoch it entered.
    EpochStarted,
    /// [`Record::Evidence`]: evidence of an equivocation it holds.
    Evidence,
    /// [`Record::Fenced`]: statements rollback protection found the log had lost.
    Fenced,
    /// A record whose checksums hold but that [`Record::decode`] refuses (another version).
    Undecodable,
}

impl RecordKind {
    /// The kind's name in reports (`signed`, `view_change`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Signed => "signed",
            RecordKind::Prepared => "prepared",
            RecordKind::Accepted => "accepted",
            RecordKind::Stable => "stable",
            RecordKind::ViewChange => "view_change",
            RecordKind::NewView => "new_view",
            RecordKind::Committed => "committed",
            RecordKind::Scheduled => "scheduled",
            RecordKind::EpochStarted => "epoch_started",
            RecordKind::Evidence => "evidence",
            RecordKind::Fenced => "fenced",
            RecordKind::Undecodable => "undecodable",
        }
    }

    /// Whether records of this kind hold, or may hold, statements this validator signed
    /// (its votes, its view changes, the pre-prepares and new views it signed as primary,
    /// the lost votes a fence keeps): what a node restarted without them could sign again,
    /// differently.
    pub fn may_hold_own_signatures(self) -> bool {
        matches!(
            self,
            RecordKind::Signed
                | RecordKind::Accepted
                | RecordKind::ViewChange
                | RecordKind::NewView
                | RecordKind::Fenced
        )
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a run of records shows: how many, of which kinds, and the highest view, stable
/// checkpoint and epoch in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Whole records (their checksums hold).
    pub records: u64,
    /// Of them, how many of each kind.
    pub kinds: BTreeMap<RecordKind, u64>,
    /// The highest view any record names (a vote's, a certificate's, a view change's or a
    /// new view's; checkpoint votes name none): about the view a node restored from them
    /// starts in.
    pub view: u64,
    /// The highest stable checkpoint's seq (a stable record's, the one a new view started
    /// from, or an epoch's start): everything at or below it is final.
    pub stable_checkpoint: u64,
    /// The highest epoch any record names (an epoch entered, a QC's).
    pub epoch: u64,
}

impl RecordCounts {
    /// Counts one record's payload.
    fn add(&mut self, payload: &[u8]) {
        self.records += 1;
        let kind = match Record::decode(payload) {
            Ok(record) => self.note(&record),
            Err(_) => RecordKind::Undecodable,
        };
        *self.kinds.entry(kind).or_default() += 1;
    }

    /// Takes the view, checkpoint and epoch `record` names; returns its kind.
    fn note(&mut self, record: &Record) -> RecordKind {
        let (kind, view) = match record {
            Record::Signed(vote) => (
                RecordKind::Signed,
                (vote.phase != Phase::Checkpoint).then_some(vote.view),
            ),
            Record::Prepared(prepared, _) => (RecordKind::Prepared, Some(prepared.proposal.view)),
            Record::Accepted(vote, _) => (RecordKind::Accepted, Some(vote.view)),
            Record::Stable(checkpoint) => {
                self.stable_checkpoint = self.stable_checkpoint.max(checkpoint.seq);
                (RecordKind::Stable, None)
            }
            Record::ViewChange(change) => (RecordKind::ViewChange, Some(change.view)),
            Record::NewView(new_view) => {
                self.stable_checkpoint = self.stable_checkpoint.max(new_view.checkpoint.seq);
                (RecordKind::NewView, Some(new_view.view))
            }
            Record::Committed(certificate, _) => {
                self.epoch = self.epoch.max(certificate.epoch);
                (RecordKind::Committed, Some(certificate.view))
            }
            Record::Scheduled { .. } => (RecordKind::Scheduled, None),
            Record::EpochStarted(change) => {
                self.epoch = self.epoch.max(change.epoch());
                self.stable_checkpoint = self.stable_checkpoint.max(change.checkpoint.seq);
                (RecordKind::EpochStarted, None)
            }
            Record::Evidence(_) => (RecordKind::Evidence, None),
            // A closed view, not one it entered.
            Record::Fenced(..) => (RecordKind::Fenced, None),
        };
        if let Some(view) = view {
            self.view = self.view.max(view);
        }
        kind
    }

    /// Records of the kinds that may hold this validator's signatures
    /// ([`RecordKind::may_hold_own_signatures`]).
    pub fn with_own_signatures(&self) -> u64 {
        self.kinds
            .iter()
            .filter(|(kind, _)| kind.may_hold_own_signatures())
            .map(|(_, count)| count)
            .sum()
    }
}

/// How one segment reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentState {
    /// Whole records to its end.
    Whole,
    /// Whole records, then a write torn by a crash at `offset`, which a node opening the
    /// log cuts off (only the last segment may end so).
    TornTail {
        /// Byte offset of the torn record.
        offset: u64,
    },
    /// The damage: whole records up to `offset`, then data that does not check out.
    Damaged {
        /// Byte offset of the damaged record (or of the segment's magic).
        offset: u64,
    },
    /// After the damage: a node never reads it; a repair moves it aside whole.
    AfterDamage,
}

/// One segment of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    /// Its file.
    pub path: PathBuf,
    /// Its size, bytes.
    pub bytes: u64,
    /// Whole records a node reads from it (before a tear or damage; those after the damage
    /// are counted in [`Lost`]).
    pub records: u64,
    /// How it reads.
    pub state: SegmentState,
}

/// What cutting the log at its damage removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// The whole records after the damage (their checksums hold; a node never reads them,
    /// since nothing after a damage is trusted to follow it), by kind.
    pub counts: RecordCounts,
    /// Damaged records: each record whose header holds but whose payload does not, and
    /// each stretch of bytes that is no record at all (at least one record each; zeros
    /// are not counted).
    pub damaged: u64,
    /// Bytes in damaged records and stretches.
    pub damaged_bytes: u64,
    /// Every byte the cut removes from the log: the damaged segment's from the damage on,
    /// and the later segments'.
    pub bytes: u64,
    /// The segments after the damaged one, moved aside whole.
    pub later_segments: Vec<PathBuf>,
}

/// Where the log is damaged, and what a cut there loses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The damaged segment.
    pub segment: PathBuf,
    /// Byte offset of the damage in it: the first record (or the magic) that does not
    /// check out. A repair cuts the segment here.
    pub offset: u64,
    /// What is wrong there.
    pub reason: &'static str,
    /// What the cut loses.
    pub lost: Lost,
}

impl Damage {
    /// Whether the damage is a record longer than the limit the log was read with: a log
    /// written by a node whose `max_message_bytes` is larger reads so, and is not damaged
    /// under its own limit ([`WalOptions::for_messages`]). Read it with the node's before
    /// cutting anything.
    pub fn may_be_a_larger_limit(&self) -> bool {
        self.reason == wal::LENGTH_ABOVE_MAXIMUM
    }
}

/// Whether a node can open the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Every segment holds whole records.
    Clean,
    /// The last segment ends in a write torn by a crash: a node opening the log cuts it off
    /// and goes on from the whole records before it (nothing to repair).
    TornTail {
        /// The last segment.
        segment: PathBuf,
        /// Byte offset of the torn record.
        offset: u64,
        /// Bytes from it to the end of the file.
        bytes: u64,
    },
    /// Damage a crash does not leave: a node refuses to open the log
    /// ([`WalError::Corrupt`]); `pbft data repair` cuts it at the damage.
    Corrupt(Damage),
}

/// A data dir, as `pbft data inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The data dir.
    pub dir: PathBuf,
    /// The log's segments, oldest first.
    pub segments: Vec<SegmentReport>,
    /// The records a node opening the log reads (up to a damage, if any): what it is
    /// restored from.
    pub counts: RecordCounts,
    /// Whether a node can open the log.
    pub health: Health,
    /// The store, if the data dir has one.
    pub store: Option<StoreSummary>,
}

impl Inspection {
    /// Whether a node refuses to open the log.
    pub fn corrupt(&self) -> bool {
        matches!(self.health, Health::Corrupt(_))
    }

    /// Bytes in the log's segments.
    pub fn wal_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.bytes).sum()
    }
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// The log is not corrupt: nothing was changed. (A torn tail is cut by the node itself
    /// when it opens the log.)
    NothingToRepair(Health),
    /// The confirmation was refused: nothing was changed.
    Declined(Damage),
    /// The log was cut at the damage.
    Repaired {
        /// Where it was and what was cut.
        damage: Damage,
        /// The directory that holds a copy of the damaged segment as it was, and the later
        /// segments, moved there whole (inside the data dir: `damaged-<unix seconds>`).
        backup: PathBuf,
    },
}

/// The data dir's lock, held while a look or a repair runs: shared for a look (a node
/// holds it exclusively while it runs), exclusive for a repair. `None` if the dir has no
/// lock file (no node ever ran there); it is never created, so a look writes nothing.
fn lock(dir: &Path, exclusive: bool) -> Result<Option<File>, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(&path)(err)),
    };
    let locked = match exclusive {
        true => file.try_lock(),
        false => file.try_lock_shared(),
    };
    match locked {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Err(DataDirError::InUse(dir.to_path_buf())),
        Err(fs::TryLockError::Error(err)) => Err(io_error(&path)(err)),
    }
}

/// The log of `dir`, read as a node would, with what lies after a damage.
struct LogScan {
    segments: Vec<SegmentReport>,
    counts: RecordCounts,
    health: Health,
}

/// Counts what lies in `bytes` from `from` on, record by record where records check out,
/// byte by byte where they do not (finding the next whole record after a damaged stretch:
/// both its checksums must hold, so a stretch of garbage passes for one about once in
/// 2^64).
fn salvage(bytes: &[u8], from: usize, options: &WalOptions, lost: &mut Lost) {
    let mut at = from;
    if at == 0 {
        // A segment's magic is no record: damaged or not, records start after it.
        if !bytes.starts_with(MAGIC) {
            lost.damaged_bytes += bytes.len().min(MAGIC.len()) as u64;
        }
        at = MAGIC.len();
    }
    // A stretch of bytes that are no record, and whether any of them is not zero.
    let mut stretch: Option<bool> = None;
    let close = |stretch: &mut Option<bool>, lost: &mut Lost| {
        if stretch.take() == Some(true) {
            lost.damaged += 1;
        }
    };
    while at < bytes.len() {
        if let Some(payload) = record_at(bytes, at, options) {
            close(&mut stretch, lost);
            lost.counts.add(payload);
            at += RECORD_HEADER + payload.len();
            continue;
        }
        if let Some(len) = believed_length(bytes, at, options) {
            // Its header holds, so its length is the writer's: one damaged record, whose
            // end is where the next one starts (or the file's end, if it runs past it).
            close(&mut stretch, lost);
            let end = (at + RECORD_HEADER + len).min(bytes.len());
            lost.damaged += 1;
            lost.damaged_bytes += (end - at) as u64;
            at = end;
            continue;
        }
        let nonzero = bytes[at] != 0;
        stretch = Some(stretch.unwrap_or(false) || nonzero);
        lost.damaged_bytes += 1;
        at += 1;
    }
    close(&mut stretch, lost);
}

/// The payload length the record header at `at` announces, if the header's checksum holds
/// and the length is within the limit.
fn believed_length(bytes: &[u8], at: usize, options: &WalOptions) -> Option<usize> {
    let header = bytes.get(at..at + RECORD_HEADER)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(0);
    (crc32c::crc32c(&header[..8]) == word(8) && len <= options.max_record_bytes)
        .then_some(len as usize)
}

fn scan_log(dir: &Path, options: &WalOptions) -> Result<LogScan, DataDirError> {
    let found = wal::segments(dir)?;
    let last = found.len().saturating_sub(1);
    let mut scan = LogScan {
        segments: Vec::with_capacity(found.len()),
        counts: RecordCounts::default(),
        health: Health::Clean,
    };
    for (index, (_, path)) in found.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_error(path))?;
        let len = bytes.len() as u64;
        if let Health::Corrupt(damage) = &mut scan.health {
            salvage(&bytes, 0, options, &mut damage.lost);
            damage.lost.bytes += len;
            damage.lost.later_segments.push(path.clone());
            scan.segments.push(SegmentReport {
                path: path.clone(),
                bytes: len,
                records: 0,
                state: SegmentState::AfterDamage,
            });
            continue;
        }
        let mut records = 0;
        let end = scan_segment(&bytes, options, |_, payload| {
            records += 1;
            scan.counts.add(payload);
        });
        let damage = match end {
            SegmentEnd::Clean => None,
            // An empty last segment (a crash right after creating it) is no tear: the node
            // writes its magic and goes on.
            SegmentEnd::Torn(_) if index == last && len == 0 => None,
            SegmentEnd::Torn(offset) if index == last => {
                scan.health = Health::TornTail {
                    segment: path.clone(),
                    offset,
                    bytes: len - offset,
                };
                scan.segments.push(SegmentReport {
                    path: path.clone(),
                    bytes: len,
                    records,
                    state: SegmentState::TornTail { offset },
                });
                continue;
            }
            // The same words `Wal::open` uses for it.
            SegmentEnd::Torn(offset) => Some((offset, wal::INCOMPLETE_BEFORE_THE_LAST)),
            SegmentEnd::Corrupt { offset, reason } => Some((offset, reason)),
        };
        let state = match damage {
            None => SegmentState::Whole,
            Some((offset, reason)) => {
                let mut lost = Lost {
                    bytes: len - offset,
                    ..Lost::default()
                };
                salvage(&bytes, offset as usize, options, &mut lost);
                scan.health = Health::Corrupt(Damage {
                    segment: path.clone(),
                    offset,
                    reason,
                    lost,
                });
                SegmentState::Damaged { offset }
            }
        };
        scan.segments.push(SegmentReport {
            path: path.clone(),
            bytes: len,
            records,
            state,
        });
    }
    Ok(scan)
}

/// Checks that `dir` is a directory that looks like a data dir.
fn check_dir(dir: &Path) -> Result<(), DataDirError> {
    if !dir.is_dir() {
        return Err(DataDirError::NotFound(dir.to_path_buf()));
    }
    let has_store = dir.join(STORE_FILE).exists();
    if !has_store && wal::segments(dir)?.is_empty() {
        return Err(DataDirError::NotADataDir(dir.to_path_buf()));
    }
    Ok(())
}

/// Looks at the data dir `dir` without writing anything in it: its log read with `options`
/// (a node's are [`WalOptions::for_messages`] of its `max_message_bytes`; a larger record
/// reads as damage), and its store ([`Store::summary`]). Holds the dir's lock, shared,
/// while it reads.
///
/// # Errors
///
/// [`DataDirError::InUse`] while a node runs on `dir`; [`DataDirError::NotFound`] and
/// [`DataDirError::NotADataDir`] for a wrong path; I/O and store errors naming the file.
/// A damaged log is no error: [`Inspection::health`] says where.
pub fn inspect(dir: &Path, options: WalOptions) -> Result<Inspection, DataDirError> {
    check_dir(dir)?;
    let _lock = lock(dir, false)?;
    let scan = scan_log(dir, &options)?;
    let store = Store::summary(dir)?;
    Ok(Inspection {
        dir: dir.to_path_buf(),
        segments: scan.segments,
        counts: scan.counts,
        health: scan.health,
        store,
    })
}

/// Cuts the log of `dir`, damaged in its middle, at the damage, if `confirm` (shown the
/// damage and what the cut loses) agrees; changes nothing otherwise, nor when the log is
/// not corrupt. Holds the dir's lock, exclusive, from the scan to the cut, so the log
/// `confirm` was shown is the log that is cut.
///
/// In this order, so that a crash at any point leaves the log as it was or cut, never with
/// a hole: a copy of the damaged segment is made durable in a new backup directory inside
/// `dir`; the later segments are moved there (after the cut, a node would read them after
/// the hole); then the segment is cut at the damage (to an empty segment, its magic, if
/// the damage is its magic). A `REPAIR.txt` in the backup says what was cut.
///
/// # Errors
///
/// As [`inspect`], and I/O errors naming the file if the copy, the moves or the cut fail
/// (the copy is made first: no original byte is lost without it).
pub fn repair(
    dir: &Path,
    options: WalOptions,
    confirm: impl FnOnce(&Damage) -> bool,
) -> Result<Repair, DataDirError> {
    check_dir(dir)?;
    let _lock = lock(dir, true)?;
    let scan = scan_log(dir, &options)?;
    let damage = match scan.health {
        Health::Corrupt(damage) => damage,
        health => return Ok(Repair::NothingToRepair(health)),
    };
    if !confirm(&damage) {
        return Ok(Repair::Declined(damage));
    }
    let backup = backup_dir(dir)?;
    let name = |path: &Path| backup.join(path.file_name().unwrap_or(path.as_os_str()));
    let copy = name(&damage.segment);
    fs::copy(&damage.segment, &copy)
        .and_then(|_| File::open(&copy)?.sync_all())
        .map_err(io_error(&copy))?;
    for later in &damage.lost.later_segments {
        fs::rename(later, name(later)).map_err(io_error(later))?;
    }
    write_note(&backup, &damage)?;
    wal::sync_dir(&backup)?;
    wal::sync_dir(dir)?;
    let segment = &damage.segment;
    let mut file = OpenOptions::new()
        .write(true)
        .open(segment)
        .map_err(io_error(segment))?;
    let cut = match damage.offset < MAGIC.len() as u64 {
        // The magic itself is damaged: the segment starts over, empty.
        true => file.set_len(0).and_then(|()| file.write_all(MAGIC)),
        false => file.set_len(damage.offset),
    };
    cut.and_then(|()| file.sync_all())
        .map_err(io_error(segment))?;
    wal::sync_dir(dir)?;
    Ok(Repair::Repaired { damage, backup })
}

/// Most backup directories tried for one second's name: beyond, something else is wrong.
const BACKUP_NAMES: u32 = 1000;

/// Creates `dir/damaged-<unix seconds>` (`-2`, `-3`, ... if taken).
fn backup_dir(dir: &Path) -> Result<PathBuf, DataDirError> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let base = dir.join(format!("damaged-{seconds}"));
    let mut taken = None;
    for attempt in 1..=BACKUP_NAMES {
        let path = match attempt {
            1 => base.clone(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        };
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => taken = Some(err),
            Err(err) => return Err(io_error(&path)(err)),
        }
    }
    let err = taken.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(io_error(&base)(err))
}

/// `REPAIR.txt` in the backup: what was cut, for whoever finds the directory later.
fn write_note(backup: &Path, damage: &Damage) -> Result<(), DataDirError> {
    let path = backup.join("REPAIR.txt");
    let kinds: Vec<String> = damage
        .lost
        .counts
        .kinds
        .iter()
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    let note = format!(
        "pbft data repair cut {} at byte {} ({}).\n\
         Here: a copy of that segment as it was, and the {} later segments, moved whole.\n\
         Cut: {} bytes; {} whole records ({}) and {} damaged.\n",
        damage.segment.display(),
        damage.offset,
        damage.reason,
        damage.lost.later_segments.len(),
        damage.lost.bytes,
        damage.lost.counts.records,
        kinds.join(", "),
        damage.lost.damaged,
    );
    fs::write(&path, note)
        .and_then(|()| File::open(&path)?.sync_all())
        .map_err(io_error(&path))
}
