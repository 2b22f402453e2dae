//! The application store: what a validator executed, durable in one embedded database.
//!
//! `state.redb` in the data dir (redb: a pure-Rust, crash-safe B-tree store with atomic
//! transactions and checksummed commits) holds, besides the application's own tables, what
//! the core needs back after a crash ([`pbft_core::ExecutedState`]): the executed seq, the
//! exactly-once table, the committed batches with their QCs and the checkpoint states. One
//! write transaction ([`Round`]) carries the application's changes and these together, for
//! one or several rounds of the node, so a crash leaves the store at the end of some round,
//! never inside one (the node's log replays the rounds after it).
//!
//! Why redb: an embedded store with ACID transactions, no C dependency, a file format with
//! checksummed commit slots (a torn write rolls back to the previous commit), and a
//! `Durability::None` commit that lets a round be read mid-way (for a checkpoint's snapshot)
//! without a second fsync.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::fused::Fused;
use crate::worker::Worker;
use pbft_core::{
    ChainId, CheckpointState, ClientRecord, Committed, Delivery, Digest, ExecutedState, Install,
    PublicKey,
};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

/// The store's file in the data dir.
pub const STORE_FILE: &str = "state.redb";

/// Counters: `executed`, `client_floor`.
const META: TableDefinition<&str, u64> = TableDefinition::new("pbft.meta");
/// The exactly-once table: client key (32 bytes) to postcard `(client_seq, request digest,
/// seq, result)`.
const CLIENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pbft.clients");
/// Committed batches by seq: postcard [`Committed`].
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("pbft.batches");
/// Checkpoint states by seq: postcard `(app, core state)` (see [`CheckpointState`]).
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("pbft.checkpoints");

/// The store's record of a checkpoint's state: the application's bytes and the core's
/// replicated state (opaque), as one postcard pair. As long as the state: worth encoding away from
/// the node's thread.
pub fn checkpoint_record(app: &[u8], core: &[u8]) -> Vec<u8> {
    postcard::to_allocvec(&(serde_bytes::Bytes::new(app), serde_bytes::Bytes::new(core)))
        .unwrap_or_default()
}
/// The chain id the data dir belongs to, under the key `"chain"` (32 bytes).
const CHAIN: TableDefinition<&str, &[u8]> = TableDefinition::new("pbft.chain");

/// Why the store cannot be opened, read or written. Each names the file; a node stops on any
/// of them (it must not answer a client whose write it could not make durable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, a full disk, corruption redb detected).
    #[error(
        "{}: {source} (free disk space if it is full; if the file is damaged, move this \
         file aside, never the WAL beside it, and start the node: it fetches the state \
         from its peers)",
        path.display()
    )]
    Database {
        /// The store's file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
    /// An entry does not decode: written by another version, or damaged.
    #[error(
        "{}: {what} does not decode (written by another version? move this file aside, \
         never the WAL beside it, and start the node: it fetches the state from its \
         peers)",
        path.display()
    )]
    Corrupt {
        /// The store's file.
        path: PathBuf,
        /// Which entry.
        what: String,
    },
    /// The data dir belongs to another chain: the network's name or one of the limits its
    /// validators must agree on changed. What this node signed before was for the other
    /// chain and would not verify under the new one.
    #[error(
        "{}: this data dir belongs to chain {stored}, the config names chain {configured} \
         (the chain id covers the network's name and its agreed limits, which cannot change \
         on a running network: restore the old values, or start a new network with empty \
         data dirs)",
        path.display()
    )]
    OtherChain {
        /// The store's file.
        path: PathBuf,
        /// The chain the data dir was created for.
        stored: Digest,
        /// The chain the config derives.
        configured: Digest,
    },
}

/// What a store holds, read without writing it (`pbft data inspect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSummary {
    /// The store's file.
    pub path: PathBuf,
    /// The file's size, bytes.
    pub bytes: u64,
    /// The executed seq of its last commit: where a node restarted on it resumes executing
    /// (its log's redo records replay the batches after it).
    pub executed: u64,
    /// The chain the data dir is bound to, once a node started on it.
    pub chain: Option<Digest>,
    /// The file was not closed cleanly (its node was killed, crashed, or stopped on an
    /// error): redb reads such a file only after repairing it, which writes it, so it was
    /// read from a repaired copy in a temporary directory, now deleted. The node repairs the
    /// file itself when it next opens it.
    pub read_from_copy: bool,
}

/// The executed seq and the chain `db` holds in its last commit (zero and none for a store
/// whose tables were never created).
fn summarize(db: &impl ReadableDatabase) -> Result<(u64, Option<Digest>), redb::Error> {
    let read = db.begin_read()?;
    let executed = match read.open_table(META) {
        Ok(meta) => meta.get("executed")?.map_or(0, |v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(err) => return Err(err.into()),
    };
    let chain = match read.open_table(CHAIN) {
        Ok(table) => table
            .get("chain")?
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.value()).ok())
            .map(Digest),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(err) => return Err(err.into()),
    };
    Ok((executed, chain))
}

/// The store of one validator.
pub struct Store {
    db: Arc<Database>,
    /// Blown by [`Store::abandon`].
    fuse: Arc<AtomicBool>,
    path: PathBuf,
    /// Commits made since the last durable one started (to let a round be read mid-way).
    unsynced: bool,
    /// A durable commit happened since [`Store::synced_now`] was last asked.
    synced: bool,
    /// The thread durable commits run on, if the store was given one
    /// ([`Store::sync_on_thread`]).
    syncer: Option<Syncer>,
    /// A durable commit is running on the sync thread: until it reports, a new write
    /// transaction would wait for it.
    syncing: bool,
}

/// What the sync thread reports for each durable commit: how long it took (s), or what redb
/// said.
pub type SyncOutcome = Result<f64, redb::Error>;

/// The thread that makes the store durable while the node's thread goes on: an empty
/// commit with redb's default durability, which makes every unsynced commit before it
/// durable (redb's `Durability::None`). The store starts one at a time.
struct Syncer(Worker<(), SyncOutcome>);

impl Syncer {
    fn start(db: Arc<Database>) -> std::io::Result<Syncer> {
        let worker = Worker::start("pbft-store-sync", move |()| {
            let started = Instant::now();
            db.begin_write()
                .map_err(redb::Error::from)
                .and_then(|tx| tx.commit().map_err(redb::Error::from))
                .map(|()| started.elapsed().as_secs_f64())
        })?;
        Ok(Syncer(worker))
    }
}

impl Store {
    /// Opens (or creates) `dir/state.redb` and reads what the replica needs back.
    ///
    /// # Errors
    ///
    /// [`StoreError`] naming the file if it cannot be opened or an entry does not decode.
    pub fn open(dir: &Path) -> Result<(Store, ExecutedState), StoreError> {
        let path = dir.join(STORE_FILE);
        let fail = |source: redb::Error| StoreError::Database {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fail(redb::Error::Io(e)))?;
        let (backend, fuse) = Fused::new(file).map_err(|e| fail(e.into()))?;
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .map_err(|e| fail(e.into()))?;
        let mut store = Store {
            db: Arc::new(db),
            fuse,
            path,
            unsynced: false,
            synced: false,
            syncer: None,
            syncing: false,
        };
        // Create the tables once, so reads never meet a missing one.
        let round = store.begin()?;
        store.commit(round)?;
        let executed = store.executed_state()?;
        Ok((store, executed))
    }

    /// What `dir/state.redb` holds, read without writing it: opened read-only, or, if it
    /// was not closed cleanly, from a repaired copy in a temporary directory
    /// ([`StoreSummary::read_from_copy`]). `None` if the data dir has no store. Take the
    /// data dir's lock first: redb refuses a file a running node holds.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] naming the file if it cannot be read (or copied).
    pub fn summary(dir: &Path) -> Result<Option<StoreSummary>, StoreError> {
        let path = dir.join(STORE_FILE);
        let fail = |source: redb::Error| StoreError::Database {
            path: path.clone(),
            source,
        };
        let bytes = match std::fs::metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(fail(redb::Error::Io(err))),
        };
        let (read, read_from_copy) = match redb::ReadOnlyDatabase::open(&path) {
            Ok(db) => (summarize(&db), false),
            // Not closed cleanly: redb would repair it in place, which a look must not do.
            Err(redb::DatabaseError::RepairAborted) => {
                let copy = tempfile::tempdir().map_err(|e| fail(redb::Error::Io(e)))?;
                let copied = copy.path().join(STORE_FILE);
                std::fs::copy(&path, &copied).map_err(|e| fail(redb::Error::Io(e)))?;
                let db = Database::create(&copied).map_err(|e| fail(e.into()))?;
                (summarize(&db), true)
            }
            Err(err) => return Err(fail(err.into())),
        };
        let (executed, chain) = read.map_err(fail)?;
        Ok(Some(StoreSummary {
            path,
            bytes,
            executed,
            chain,
            read_from_copy,
        }))
    }

    /// Binds the data dir to `chain` on its first start and refuses another chain after.
    ///
    /// # Errors
    ///
    /// [`StoreError::OtherChain`] if the data dir was created for another chain; a database
    /// error if it cannot be read or written.
    pub fn bind_chain(&mut self, chain: &ChainId) -> Result<(), StoreError> {
        let round = self.begin()?;
        let stored = {
            let mut table = round.tx.open_table(CHAIN).map_err(|e| self.fail(e))?;
            let stored = table
                .get("chain")
                .map_err(|e| self.fail(e))?
                .map(|bytes| bytes.value().to_vec());
            if stored.is_none() {
                table
                    .insert("chain", chain.0.0.as_slice())
                    .map_err(|e| self.fail(e))?;
            }
            stored
        };
        match stored {
            None => self.commit(round),
            Some(bytes) if bytes == chain.0.0 => Ok(()),
            Some(bytes) => Err(StoreError::OtherChain {
                path: self.path.clone(),
                stored: Digest(bytes.try_into().unwrap_or([0; 32])),
                configured: chain.0,
            }),
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source: source.into(),
        }
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Starts a round: one write transaction for everything the node executes until
    /// [`Store::commit`].
    pub fn begin(&self) -> Result<Round, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        tx.open_table(META).map_err(|e| self.fail(e))?;
        tx.open_table(CLIENTS).map_err(|e| self.fail(e))?;
        tx.open_table(BATCHES).map_err(|e| self.fail(e))?;
        tx.open_table(CHECKPOINTS).map_err(|e| self.fail(e))?;
        Ok(Round {
            tx,
            path: self.path.clone(),
        })
    }

    /// A consistent read of the last commit (durable or not).
    pub fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(|e| self.fail(e))
    }

    /// Leaves the file as a crash would: redb makes unsynced commits durable when it closes,
    /// and after this nothing more is written (every write to the file fails), so
    /// the next open starts from the last durable commit. For a node that stops on an
    /// error.
    pub fn abandon(&self) {
        self.fuse.store(true, Ordering::Release);
    }

    /// Whether the last call that could sync did (and takes the answer): for counting fsyncs.
    pub fn synced_now(&mut self) -> bool {
        std::mem::take(&mut self.synced)
    }

    /// Makes every commit so far durable (one fsync), if one is not yet.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            let round = self.begin()?;
            self.commit(round)?;
        }
        Ok(())
    }

    /// Commits `round` durably (one fsync), with every commit before it.
    pub fn commit(&mut self, round: Round) -> Result<(), StoreError> {
        round.tx.commit().map_err(|e| self.fail(e))?;
        self.unsynced = false;
        self.synced = true;
        Ok(())
    }

    /// Runs the durable commits [`Store::start_sync`] starts on a thread of their own.
    ///
    /// # Errors
    ///
    /// The thread cannot be spawned.
    pub fn sync_on_thread(&mut self) -> std::io::Result<()> {
        if self.syncer.is_none() {
            self.syncer = Some(Syncer::start(self.db.clone())?);
        }
        Ok(())
    }

    /// Where the sync thread reports, if the store has one: wait on it beside the node's
    /// other inputs, and hand each outcome to [`Store::sync_finished`].
    pub fn finished_syncs(&self) -> Option<flume::Receiver<SyncOutcome>> {
        self.syncer.as_ref().map(|syncer| syncer.0.done().clone())
    }

    /// Commits `round` (unsynced) and starts making every commit so far durable on the sync
    /// thread; a read sees them at once. Until [`Store::sync_finished`], a new round would
    /// wait for that commit ([`Store::syncing`]). `false` if nothing was started: with no
    /// thread (then the round is committed unsynced only: use [`Store::commit`]), with
    /// nothing unsynced, or with the thread gone (it panicked), when the durable commit is
    /// made here instead.
    ///
    /// # Errors
    ///
    /// The commit of `round` failed.
    pub fn start_sync(&mut self, round: Option<Round>) -> Result<bool, StoreError> {
        if let Some(round) = round {
            self.commit_unsynced(round)?;
        }
        let Some(syncer) = self
            .syncer
            .as_ref()
            .filter(|_| self.unsynced && !self.syncing)
        else {
            return Ok(false);
        };
        if !syncer.0.submit(()) {
            // The thread is gone (it panicked): sync here instead.
            return self.sync().map(|()| false);
        }
        self.syncing = true;
        // What it makes durable; a commit made meanwhile sets it again.
        self.unsynced = false;
        Ok(true)
    }

    /// Whether durable commits run on a sync thread ([`Store::sync_on_thread`]).
    pub fn has_sync_thread(&self) -> bool {
        self.syncer.is_some()
    }

    /// A durable commit runs on the sync thread and has not been reported yet.
    pub fn syncing(&self) -> bool {
        self.syncing
    }

    /// The sync thread's report of the commit [`Store::start_sync`] started: how long it
    /// took (s). Every commit before it is durable now.
    ///
    /// # Errors
    ///
    /// What redb reported: the store may not be durable (a full disk, an I/O error).
    pub fn sync_finished(&mut self, outcome: SyncOutcome) -> Result<f64, StoreError> {
        self.syncing = false;
        match outcome {
            Ok(seconds) => {
                self.synced = true;
                Ok(seconds)
            }
            Err(source) => {
                self.unsynced = true;
                Err(self.fail(source))
            }
        }
    }

    /// Commits `round` without making it durable, so a read sees it (a checkpoint's
    /// snapshot); the next durable commit makes it durable, and a crash before that loses it
    /// whole.
    pub fn commit_unsynced(&mut self, round: Round) -> Result<(), StoreError> {
        let mut tx = round.tx;
        tx.set_durability(Durability::None)
            .map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))?;
        self.unsynced = true;
        Ok(())
    }

    /// The committed batch at `seq` with its QC, if the store still holds it.
    pub fn committed(&self, seq: u64) -> Result<Option<Committed>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(BATCHES).map_err(|e| self.fail(e))?;
        let Some(bytes) = table.get(seq).map_err(|e| self.fail(e))? else {
            return Ok(None);
        };
        postcard::from_bytes(bytes.value())
            .map(Some)
            .map_err(|_| self.corrupt(format!("batch {seq}")))
    }

    /// The executed seq `read` sees: the seq its application state is as of.
    ///
    /// # Errors
    ///
    /// The table cannot be read.
    pub fn executed_in(&self, read: &ReadTransaction) -> Result<u64, StoreError> {
        let meta = read.open_table(META).map_err(|e| self.fail(e))?;
        let executed = meta.get("executed").map_err(|e| self.fail(e))?;
        Ok(executed.map_or(0, |v| v.value()))
    }

    /// What the replica needs back after a crash: the executed seq, the exactly-once table
    /// and the batches.
    pub fn executed_state(&self) -> Result<ExecutedState, StoreError> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(|e| self.fail(e))?;
        let get = |name: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(name)
                .map_err(|e| self.fail(e))?
                .map_or(0, |v| v.value()))
        };
        let executed = get("executed")?;
        let client_floor = get("client_floor")?;
        let mut clients = Vec::new();
        let table = tx.open_table(CLIENTS).map_err(|e| self.fail(e))?;
        for entry in table.iter().map_err(|e| self.fail(e))? {
            let (key, value) = entry.map_err(|e| self.fail(e))?;
            let client = <[u8; 32]>::try_from(key.value())
                .map_err(|_| self.corrupt("a client key".to_string()))?;
            let (client_seq, request, seq, result): (u64, Digest, u64, Option<Vec<u8>>) =
                postcard::from_bytes(value.value())
                    .map_err(|_| self.corrupt("a client row".to_string()))?;
            clients.push(ClientRecord {
                client: PublicKey(client),
                client_seq,
                request,
                seq,
                result,
            });
        }
        let mut committed = Vec::new();
        let table = tx.open_table(BATCHES).map_err(|e| self.fail(e))?;
        for entry in table.iter().map_err(|e| self.fail(e))? {
            let (seq, value) = entry.map_err(|e| self.fail(e))?;
            let batch: Committed = postcard::from_bytes(value.value())
                .map_err(|_| self.corrupt(format!("batch {}", seq.value())))?;
            committed.push(batch);
        }
        let mut checkpoints = Vec::new();
        let table = tx.open_table(CHECKPOINTS).map_err(|e| self.fail(e))?;
        for entry in table.iter().map_err(|e| self.fail(e))? {
            let (seq, value) = entry.map_err(|e| self.fail(e))?;
            let seq = seq.value();
            let (app, core): (serde_bytes::ByteBuf, serde_bytes::ByteBuf) =
                postcard::from_bytes(value.value())
                    .map_err(|_| self.corrupt(format!("checkpoint {seq}")))?;
            checkpoints.push(CheckpointState {
                seq,
                app: app.into_vec(),
                core: core.into_vec(),
            });
        }
        Ok(ExecutedState {
            executed,
            client_floor,
            clients,
            committed,
            checkpoints,
        })
    }
}

/// One round's write transaction. The application writes its tables through [`Round::tx`];
/// [`Round::record_delivery`] and [`Round::record_install`] keep the core's side of the
/// contract ([`ExecutedState`]). Dropped without a commit, nothing of it happened.
pub struct Round {
    tx: WriteTransaction,
    path: PathBuf,
}

impl Round {
    fn fail(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source: source.into(),
        }
    }

    /// The transaction, for the application's own tables.
    pub fn tx(&self) -> &WriteTransaction {
        &self.tx
    }

    /// Records an executed delivery: one row per executed request (`results` in the order of
    /// `delivery.execute`, then the replica's own in `delivery.decided`), then the forgotten clients' rows deleted, the floor, the executed
    /// seq and the batch with its QC.
    pub fn record_delivery(
        &mut self,
        delivery: &Delivery,
        results: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let store = &*self;
        let tx = &self.tx;
        let mut clients = tx.open_table(CLIENTS).map_err(|e| store.fail(e))?;
        let chain = &delivery.certificate.chain_id;
        // In batch order: of two requests of one client, the later one's row stays.
        let mut rows: Vec<(u32, &Vec<u8>)> =
            delivery.execute.iter().copied().zip(results).collect();
        rows.extend(
            delivery
                .decided
                .iter()
                .map(|(index, result)| (*index, result)),
        );
        rows.sort_by_key(|(index, _)| *index);
        for (index, result) in rows {
            let Some(request) = delivery.batch.requests.get(index as usize) else {
                continue;
            };
            let digest = request.digest(chain);
            let row = (request.client_seq, digest, delivery.seq, Some(result));
            let row = postcard::to_allocvec(&row).unwrap_or_default();
            clients
                .insert(&request.client.0[..], &row[..])
                .map_err(|e| store.fail(e))?;
        }
        for client in &delivery.forgotten {
            clients.remove(&client.0[..]).map_err(|e| store.fail(e))?;
        }
        drop(clients);
        let mut meta = tx.open_table(META).map_err(|e| store.fail(e))?;
        meta.insert("client_floor", delivery.client_floor)
            .map_err(|e| store.fail(e))?;
        meta.insert("executed", delivery.seq)
            .map_err(|e| store.fail(e))?;
        drop(meta);
        let bytes = committed_bytes(delivery);
        let mut batches = tx.open_table(BATCHES).map_err(|e| store.fail(e))?;
        batches
            .insert(delivery.seq, &bytes[..])
            .map_err(|e| store.fail(e))?;
        Ok(())
    }

    /// Records an installed checkpoint: its exactly-once table replaces the stored one, the
    /// executed seq moves to it, and batches above it (executed against the replaced state,
    /// now void) go.
    pub fn record_install(&mut self, install: &Install) -> Result<(), StoreError> {
        let store = &*self;
        let tx = &self.tx;
        let mut clients = tx.open_table(CLIENTS).map_err(|e| store.fail(e))?;
        clients.retain(|_, _| false).map_err(|e| store.fail(e))?;
        for record in &install.clients {
            let row = (
                record.client_seq,
                record.request,
                record.seq,
                &record.result,
            );
            let row = postcard::to_allocvec(&row).unwrap_or_default();
            clients
                .insert(&record.client.0[..], &row[..])
                .map_err(|e| store.fail(e))?;
        }
        drop(clients);
        let mut meta = tx.open_table(META).map_err(|e| store.fail(e))?;
        meta.insert("client_floor", install.client_floor)
            .map_err(|e| store.fail(e))?;
        meta.insert("executed", install.seq)
            .map_err(|e| store.fail(e))?;
        drop(meta);
        let mut batches = tx.open_table(BATCHES).map_err(|e| store.fail(e))?;
        batches
            .retain_in(install.seq + 1.., |_, _| false)
            .map_err(|e| store.fail(e))?;
        drop(batches);
        let mut checkpoints = tx.open_table(CHECKPOINTS).map_err(|e| store.fail(e))?;
        checkpoints
            .retain_in(install.seq + 1.., |_, _| false)
            .map_err(|e| store.fail(e))?;
        Ok(())
    }

    /// Keeps the state at a checkpoint (the replica's own, or one it installed), so peers
    /// can fetch it from this replica after it restarted.
    pub fn record_checkpoint(&mut self, state: &CheckpointState) -> Result<(), StoreError> {
        let record = checkpoint_record(&state.app, &state.core);
        self.record_checkpoint_encoded(state.seq, &record)
    }

    /// [`Round::record_checkpoint`] with the record encoded already ([`checkpoint_record`],
    /// off the node's thread).
    pub fn record_checkpoint_encoded(&mut self, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        let mut table = self.tx.open_table(CHECKPOINTS).map_err(|e| self.fail(e))?;
        table.insert(seq, record).map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Drops the checkpoint states below `stable`: no peer fetches them any more.
    pub fn prune_checkpoints(&mut self, stable: u64) -> Result<(), StoreError> {
        let mut table = self.tx.open_table(CHECKPOINTS).map_err(|e| self.fail(e))?;
        table
            .retain_in(..stable, |_, _| false)
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Drops the batches at or below `seq`: below the stable checkpoint's retained batches,
    /// no peer can still ask for them.
    pub fn prune_batches(&mut self, seq: u64) -> Result<(), StoreError> {
        let store = &*self;
        let mut batches = self.tx.open_table(BATCHES).map_err(|e| store.fail(e))?;
        batches
            .retain_in(..=seq, |_, _| false)
            .map_err(|e| store.fail(e))?;
        Ok(())
    }
}

/// A delivery's batch and QC as a stored [`Committed`], encoded from borrows: postcard writes
/// a struct as its fields in order, so the tuple's bytes are the struct's (a test checks it),
/// and the batch is not copied to be stored.
fn committed_bytes(delivery: &Delivery) -> Vec<u8> {
    postcard::to_allocvec(&(&delivery.batch, &delivery.certificate)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::{
        Batch, ChainId, CommitPath, Keypair, QuorumCertificate, ReplicaId, Request, Signature,
    };

    #[test]
    fn a_stored_batch_is_encoded_as_committed_without_a_copy() {
        let chain = ChainId::from_name("store");
        let client = Keypair::from_seed(&[1; 32]);
        let batch = Batch::of(
            (1..=3)
                .map(|seq| Request::new(&chain, &client, seq, vec![seq as u8; 40]))
                .collect(),
        );
        let certificate = QuorumCertificate {
            chain_id: chain,
            epoch: 0,
            view: 2,
            seq: 7,
            digest: batch.digest(&chain),
            path: CommitPath::ThreePhase,
            signatures: (0..3)
                .map(|i| (ReplicaId(i), Signature([i as u8; 64])))
                .collect(),
        };
        let delivery = Delivery {
            seq: 7,
            batch: batch.clone(),
            certificate: certificate.clone(),
            execute: vec![0, 1, 2],
            decided: vec![],
            checkpoint: false,
            forgotten: Vec::new(),
            client_floor: 0,
        };
        let committed = Committed { batch, certificate };
        assert_eq!(
            committed_bytes(&delivery),
            postcard::to_allocvec(&committed).unwrap()
        );
    }
}
