//! The store's file with a fuse: once blown, nothing more reaches the file, as in a crash.
//!
//! redb makes a database's unsynced commits durable when it closes cleanly. A node that stops
//! on an error must not let that happen: its unsynced commits may run past what its log
//! vouches for (a checkpoint whose vote never reached the log, which a restart could then
//! never sign). Blowing the fuse turns the close into a crash: redb's writes and syncs fail
//! from then on (it latches the I/O error and writes nothing more), and the next open starts
//! from the last durable commit; the file and its locks are still released, so the same
//! process may open it again.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

/// A [`FileBackend`] whose writes stop for good once its fuse is blown.
#[derive(Debug)]
pub(crate) struct Fused {
    file: FileBackend,
    blown: Arc<AtomicBool>,
}

impl Fused {
    /// The backend over `file`, and its fuse: store `true` to blow it.
    pub(crate) fn new(file: File) -> Result<(Fused, Arc<AtomicBool>), DatabaseError> {
        let blown = Arc::new(AtomicBool::new(false));
        let fused = Fused {
            file: FileBackend::new(file)?,
            blown: blown.clone(),
        };
        Ok((fused, blown))
    }

    fn check(&self) -> io::Result<()> {
        match self.blown.load(Ordering::Acquire) {
            true => Err(io::Error::other("the store was abandoned (as in a crash)")),
            false => Ok(()),
        }
    }
}

impl StorageBackend for Fused {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
