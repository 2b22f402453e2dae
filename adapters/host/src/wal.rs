//! The write-ahead log: where a node makes the core's `Persist` records durable before it sends
//! the messages that carry their signatures.
//!
//! A directory of append-only segments `00000000000000000001.wal`, ... Each segment starts with
//! an 8-byte magic; each record is `len: u32 LE | payload CRC32C: u32 LE | header CRC32C: u32
//! LE | payload`, the header CRC covering the length and the payload CRC, so a damaged length
//! is caught before it is believed. [`Wal::append`] only buffers; [`Wal::sync`] writes every buffered
//! record and calls `fdatasync` once (group commit: a batch's prepares, commits and checkpoint
//! cost one sync). [`Wal::compact`] starts a new segment with the records still needed and
//! deletes the older ones, after a stable checkpoint made the rest useless.
//!
//! Recovery ([`Wal::open`]) reads the segments in order. A write torn by a crash can only
//! damage the end of the last segment: a record that runs past the end of the file, or one
//! that does not check out and is followed by nothing but zeros (a file system may extend a
//! file before its data lands), or is the last thing in the file. Such a tail is cut off and
//! the log continues from the last whole record. Anything else that does not check out — a
//! bad checksum with data after it, a bad segment magic, a torn record in a segment that is
//! not the last — is corruption: [`WalError::Corrupt`] names the segment and the offset, and
//! nothing after it is read. [`crate::data_dir`] shows such damage to an operator, with what
//! lies after it, and cuts the log there when told to (`pbft data repair`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every segment: the format and its version.
pub const MAGIC: &[u8; 8] = b"PBFTWAL\x01";

/// Bytes before each record's payload: its length, the payload's CRC and the header's CRC.
pub const RECORD_HEADER: usize = 12;

/// Why a record is corrupt when its header holds and announces more than
/// [`WalOptions::max_record_bytes`]: a log written under a larger limit (a network whose
/// `max_message_bytes` is larger than the options read with) reads so too.
pub const LENGTH_ABOVE_MAXIMUM: &str = "record length above the maximum";

/// Why a segment that is not the last is corrupt when it ends in a record cut short: only
/// the last write, at the end of the last segment, can be torn by a crash.
pub const INCOMPLETE_BEFORE_THE_LAST: &str = "incomplete record in a segment that is not the last";

/// Limits of a log.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// A segment that reached this many bytes is closed; the next record starts a new one.
    /// Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest record accepted, and believed when reading a length. Default 16 MiB (a
    /// record is one signed message of the core; a view change is the largest).
    pub max_record_bytes: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
        }
    }
}

impl WalOptions {
    /// Options whose record limit holds any record a replica with this largest message
    /// (`max_message_bytes`, the core's config) emits: a record is at most one message (a
    /// pre-prepare's batch, a new view) plus a certificate's signatures, so it gets 1 MiB of
    /// room above the message, and never less than the default.
    pub fn for_messages(max_message_bytes: usize) -> Self {
        let defaults = WalOptions::default();
        let needed = max_message_bytes.saturating_add(1 << 20);
        WalOptions {
            max_record_bytes: u32::try_from(needed)
                .unwrap_or(u32::MAX)
                .max(defaults.max_record_bytes),
            ..defaults
        }
    }
}

/// What went wrong with the log. Any error but `RecordTooLarge` leaves the log unusable:
/// the node must stop rather than sign without a durable record.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Data that is not a torn tail does not check out.
    #[error("{} is corrupt at byte {offset}: {reason}", segment.display())]
    Corrupt {
        /// The segment.
        segment: PathBuf,
        /// Byte offset of the bad record (or header) in the segment.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A record above `max_record_bytes`; nothing was written.
    #[error("record of {len} bytes exceeds the maximum of {max}")]
    RecordTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counters for metrics and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended.
    pub appends: u64,
    /// `fdatasync` calls that made records durable.
    pub syncs: u64,
    /// Record bytes written, headers included.
    pub bytes: u64,
}

/// An open log, positioned at its end.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    file: File,
    path: PathBuf,
    number: u64,
    len: u64,
    buffer: Vec<u8>,
    stats: WalStats,
}

fn segment_name(number: u64) -> String {
    format!("{number:020}.wal")
}

/// The segments in `dir` (files named `<number>.wal`) by number, with their paths.
pub(crate) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".wal"))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Makes `dir`'s entries durable (a created, renamed or removed file).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The 12-byte header of a record with `payload`.
fn header(payload: &[u8], len: u32) -> [u8; RECORD_HEADER] {
    let mut header = [0; RECORD_HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..8]);
    header[8..].copy_from_slice(&header_crc.to_le_bytes());
    header
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Where reading one segment stopped.
enum End {
    /// At the end of the file, after whole records.
    Clean,
    /// At a torn record starting at this offset.
    Torn(u64),
}

/// How a segment's bytes end, as [`Wal::open`] judges them: what [`scan_segment`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegmentEnd {
    /// After whole records, at the end of the file.
    Clean,
    /// At a record cut short (or a short magic at offset 0): a crash's torn write if the
    /// segment is the last one, corruption if it is not.
    Torn(u64),
    /// At data that does not check out and is not a torn write.
    Corrupt {
        /// Byte offset of the bad record (or of the magic) in the segment.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads one segment's `bytes` as the log does: calls `record(offset, payload)` for each
/// whole record in order, and says where and why reading stopped. The one judge of a
/// segment, shared by [`Wal::open`] and what inspects a data dir ([`crate::data_dir`]), so
/// an inspection reports exactly what opening the log would meet.
pub(crate) fn scan_segment(
    bytes: &[u8],
    options: &WalOptions,
    mut record: impl FnMut(u64, &[u8]),
) -> SegmentEnd {
    let corrupt = |offset: usize, reason| SegmentEnd::Corrupt {
        offset: offset as u64,
        reason,
    };
    match bytes.get(..MAGIC.len()) {
        Some(magic) if magic == MAGIC => {}
        // A crash right after creating the segment can leave a short or empty header.
        _ if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) => return SegmentEnd::Torn(0),
        _ => return corrupt(0, "not a pbft WAL segment (bad magic)"),
    }
    let mut offset = MAGIC.len();
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        // What follows a damaged record decides: only zeros (or nothing) means the crash
        // tore the last write; real data after it means the damage is not a tear.
        let torn_after = |at: usize| {
            rest.get(at..)
                .is_none_or(|tail| tail.iter().all(|&b| b == 0))
        };
        if rest.len() < RECORD_HEADER {
            return SegmentEnd::Torn(offset as u64);
        }
        let len = u32_at(rest, 0);
        let payload_crc = u32_at(rest, 4);
        if crc32c::crc32c(&rest[..8]) != u32_at(rest, 8) {
            return match torn_after(RECORD_HEADER) {
                true => SegmentEnd::Torn(offset as u64),
                false => corrupt(offset, "record header checksum mismatch"),
            };
        }
        if len > options.max_record_bytes {
            return corrupt(offset, LENGTH_ABOVE_MAXIMUM);
        }
        let end = RECORD_HEADER + len as usize;
        let Some(payload) = rest.get(RECORD_HEADER..end) else {
            // A whole header announcing more than the file holds: the last write, cut short.
            return SegmentEnd::Torn(offset as u64);
        };
        if crc32c::crc32c(payload) != payload_crc {
            return match torn_after(end) {
                true => SegmentEnd::Torn(offset as u64),
                false => corrupt(offset, "record checksum mismatch"),
            };
        }
        record(offset as u64, payload);
        offset += end;
    }
    SegmentEnd::Clean
}

/// The record that starts at `offset` of `bytes` if it is whole and checks out (header and
/// payload checksums, length within `max_record_bytes`): its payload.
pub(crate) fn record_at<'a>(
    bytes: &'a [u8],
    offset: usize,
    options: &WalOptions,
) -> Option<&'a [u8]> {
    let rest = bytes.get(offset..)?;
    let header = rest.get(..RECORD_HEADER)?;
    if crc32c::crc32c(&header[..8]) != u32_at(header, 8) {
        return None;
    }
    let len = u32_at(header, 0);
    if len > options.max_record_bytes {
        return None;
    }
    let payload = rest.get(RECORD_HEADER..RECORD_HEADER + len as usize)?;
    (crc32c::crc32c(payload) == u32_at(header, 4)).then_some(payload)
}

/// Reads the records of one segment into `records`.
fn read_segment(
    path: &Path,
    options: &WalOptions,
    records: &mut Vec<Vec<u8>>,
) -> Result<End, WalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    match scan_segment(&bytes, options, |_, payload| records.push(payload.to_vec())) {
        SegmentEnd::Clean => Ok(End::Clean),
        SegmentEnd::Torn(offset) => Ok(End::Torn(offset)),
        SegmentEnd::Corrupt { offset, reason } => Err(WalError::Corrupt {
            segment: path.to_path_buf(),
            offset,
            reason,
        }),
    }
}

impl Wal {
    /// Whether `dir` holds a log with anything past a segment's magic: false for a missing
    /// or unreadable directory, or one with only empty segments (a log opened and never
    /// written, as by a validator whose join failed).
    pub fn exists(dir: &Path) -> bool {
        segments(dir).is_ok_and(|found| {
            found.iter().any(|(_, path)| {
                fs::metadata(path).is_ok_and(|meta| meta.len() > MAGIC.len() as u64)
            })
        })
    }

    /// Opens (or creates) the log in `dir` and returns it with every whole record, oldest
    /// first. A torn tail of the last segment is cut off; corruption anywhere else is an error.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Vec<Vec<u8>>), WalError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let found = segments(dir)?;
        let mut records = Vec::new();
        let last = found.len().saturating_sub(1);
        let mut tail: Option<(u64, PathBuf)> = None;
        for (index, (number, path)) in found.iter().enumerate() {
            match read_segment(path, &options, &mut records)? {
                End::Clean => {}
                End::Torn(offset) if index == last => {
                    // Cut the torn record so new records follow whole ones.
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_error(path))?;
                    // Offset 0 is a torn magic: the segment starts over.
                    file.set_len(offset)
                        .and_then(|()| file.sync_all())
                        .map_err(io_error(path))?;
                }
                End::Torn(offset) => {
                    return Err(WalError::Corrupt {
                        segment: path.clone(),
                        offset,
                        reason: INCOMPLETE_BEFORE_THE_LAST,
                    });
                }
            }
            if index == last {
                tail = Some((*number, path.clone()));
            }
        }
        let (number, path) = tail.unwrap_or_else(|| (1, dir.join(segment_name(1))));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut len = file.metadata().map_err(io_error(&path))?.len();
        if len == 0 {
            file.write_all(MAGIC)
                .and_then(|()| file.sync_all())
                .map_err(io_error(&path))?;
            sync_dir(dir)?;
            len = MAGIC.len() as u64;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            file,
            path,
            number,
            len,
            buffer: Vec::new(),
            stats: WalStats::default(),
        };
        Ok((wal, records))
    }

    /// Buffers one record. It is durable only after the next [`Wal::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<(), WalError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len <= self.options.max_record_bytes)
            .ok_or(WalError::RecordTooLarge {
                len: payload.len(),
                max: self.options.max_record_bytes,
            })?;
        self.buffer.extend_from_slice(&header(payload, len));
        self.buffer.extend_from_slice(payload);
        self.stats.appends += 1;
        Ok(())
    }

    /// Writes every buffered record and makes it durable with one `fdatasync`. Does nothing
    /// when nothing is buffered.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.len >= self.options.segment_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(&self.buffer)
            .and_then(|()| self.file.sync_data())
            .map_err(io_error(&self.path))?;
        self.len += self.buffer.len() as u64;
        self.stats.bytes += self.buffer.len() as u64;
        self.stats.syncs += 1;
        self.buffer.clear();
        Ok(())
    }

    /// Starts the next segment (its header durable, and its directory entry).
    fn rotate(&mut self) -> Result<(), WalError> {
        let number = self.number + 1;
        let path = self.dir.join(segment_name(number));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&path))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.path = path;
        self.number = number;
        self.len = MAGIC.len() as u64;
        Ok(())
    }

    /// Replaces the log by `live`: writes them to a new segment, makes it durable, then
    /// deletes every older segment. A crash in between leaves both, and recovery reads the
    /// live records twice (and any logged after them that `live` repeats), which the core
    /// tolerates (restoring a record is idempotent).
    pub fn compact(&mut self, live: &[Vec<u8>]) -> Result<(), WalError> {
        self.sync()?;
        let old = segments(&self.dir)?;
        self.rotate()?;
        for record in live {
            self.append(record)?;
        }
        self.sync()?;
        for (number, path) in old {
            if number < self.number {
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> WalStats {
        self.stats
    }

    /// Bytes buffered and not yet durable.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }
}
