//! The default application: a key-value store the binary serves, durable in the node's store.
//!
//! Operations and results are postcard-encoded [`Op`] and [`OpResult`]. Execution is
//! deterministic (a B-tree table, no clock, no randomness), and bytes that are not an operation
//! execute as [`OpResult::Invalid`] on every replica alike. A snapshot is the canonical encoding
//! of the map, entries in key order, then of the convictions, so equal stores give equal bytes
//! and equal checkpoint digests.
//!
//! Its punishment policy: a validator whose equivocation evidence commits is convicted, once
//! per epoch, at the seq of the first batch that carried it ([`KvStore::convicted`]). The
//! record is replicated state (checkpointed, fetched by state transfer); removing the
//! validator at the next epoch boundary waits for reconfiguration (issue 15).

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use pbft_core::Evidence;

use crate::application::{AppError, Application};

/// An operation on the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Reads `key` (ordered like a write, so the read sees every write before it).
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets `key` to `new` (or removes it if `None`) only if its value is `expected` (`None`:
    /// absent).
    CompareAndSwap {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value the key must have.
        expected: Option<Vec<u8>>,
        /// The value to set.
        new: Option<Vec<u8>>,
    },
}

impl Op {
    /// The operation's bytes, for a request.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A write took effect.
    Done,
    /// The value read (or removed), if the key was present.
    Value(Option<Vec<u8>>),
    /// A compare-and-swap found another value; nothing changed.
    Mismatch {
        /// The value the key has.
        current: Option<Vec<u8>>,
    },
    /// The request's bytes are not an operation.
    Invalid,
}

impl OpResult {
    /// Reads a result from a reply.
    pub fn decode(bytes: &[u8]) -> Option<OpResult> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Why a snapshot cannot be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a key-value snapshot (or keys out of order)")]
pub struct SnapshotError;

/// The store's entries, in the node's [`crate::store::Store`].
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// (epoch, validator id) → the seq whose batch first carried evidence against it.
const CONVICTED: TableDefinition<(u64, u16), u64> = TableDefinition::new("kv.convicted");

/// A conviction: (epoch, validator id, seq of the batch that first carried its evidence).
pub type Conviction = (u64, u16, u64);

/// The key-value application. Its state is the `kv` table of the node's store, so each
/// executed batch is durable with the round that executed it; the struct holds nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStore;

impl KvStore {
    /// The application (its state is in the store).
    pub fn new() -> Self {
        KvStore
    }

    /// Executes one operation's bytes against `table` and returns the encoded result.
    fn execute_one(
        table: &mut Table<&[u8], &[u8]>,
        op: &[u8],
    ) -> Result<Vec<u8>, redb::StorageError> {
        let result = match postcard::from_bytes::<Op>(op) {
            Ok(op) => Self::apply(table, op)?,
            Err(_) => OpResult::Invalid,
        };
        Ok(postcard::to_allocvec(&result).unwrap_or_default())
    }

    fn apply(table: &mut Table<&[u8], &[u8]>, op: Op) -> Result<OpResult, redb::StorageError> {
        Ok(match op {
            Op::Put { key, value } => {
                table.insert(&key[..], &value[..])?;
                OpResult::Done
            }
            Op::Get { key } => OpResult::Value(table.get(&key[..])?.map(|v| v.value().to_vec())),
            Op::Delete { key } => {
                OpResult::Value(table.remove(&key[..])?.map(|v| v.value().to_vec()))
            }
            Op::CompareAndSwap { key, expected, new } => {
                let current = table.get(&key[..])?.map(|v| v.value().to_vec());
                if current != expected {
                    return Ok(OpResult::Mismatch { current });
                }
                match new {
                    Some(value) => drop(table.insert(&key[..], &value[..])?),
                    None => drop(table.remove(&key[..])?),
                };
                OpResult::Done
            }
        })
    }

    /// The value of `key` as of `tx`, for local reads and tests.
    pub fn get(tx: &ReadTransaction, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        let table = match tx.open_table(ENTRIES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Number of keys as of `tx`.
    pub fn len(tx: &ReadTransaction) -> Result<u64, redb::Error> {
        match tx.open_table(ENTRIES) {
            Ok(table) => Ok(table.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    /// The validators convicted as of `tx`, in (epoch, id) order.
    pub fn convicted(tx: &ReadTransaction) -> Result<Vec<Conviction>, redb::Error> {
        let table = match tx.open_table(CONVICTED) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        };
        let mut convicted = Vec::new();
        for entry in table.iter()? {
            let (key, seq) = entry?;
            let (epoch, id) = key.value();
            convicted.push((epoch, id, seq.value()));
        }
        Ok(convicted)
    }

    /// The canonical snapshot as of `tx`: the postcard encoding of the entries in key order
    /// (a `Vec<(Vec<u8>, Vec<u8>)>`, written entry by entry), then of the convictions (a
    /// `Vec<Conviction>` in order).
    pub fn snapshot_of(tx: &ReadTransaction) -> Result<Vec<u8>, redb::Error> {
        let mut out = match tx.open_table(ENTRIES) {
            Ok(table) => {
                let count = usize::try_from(table.len()?).unwrap_or(usize::MAX);
                let mut out = postcard::to_allocvec(&count).unwrap_or_default();
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    let pair = (
                        serde_bytes::Bytes::new(key.value()),
                        serde_bytes::Bytes::new(value.value()),
                    );
                    out = postcard::to_extend(&pair, out).unwrap_or_default();
                }
                out
            }
            Err(redb::TableError::TableDoesNotExist(_)) => vec![0],
            Err(err) => return Err(err.into()),
        };
        out = postcard::to_extend(&Self::convicted(tx)?, out).unwrap_or_default();
        Ok(out)
    }
}

/// A snapshot decoded: the entries, then the convictions.
type Snapshot = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Conviction>);

impl Application for KvStore {
    fn execute(&mut self, tx: &WriteTransaction, ops: &[&[u8]]) -> Result<Vec<Vec<u8>>, AppError> {
        let mut table = tx.open_table(ENTRIES).map_err(redb::Error::from)?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(Self::execute_one(&mut table, op).map_err(redb::Error::from)?);
        }
        Ok(results)
    }

    /// Convicts each offender once per epoch, at the first seq that carried its evidence.
    fn convict(
        &mut self,
        tx: &WriteTransaction,
        seq: u64,
        evidence: &[Evidence],
    ) -> Result<(), AppError> {
        let mut table = tx.open_table(CONVICTED).map_err(redb::Error::from)?;
        for piece in evidence {
            let key = (piece.epoch, piece.offender().0);
            if table.get(key).map_err(redb::Error::from)?.is_none() {
                table.insert(key, seq).map_err(redb::Error::from)?;
            }
        }
        Ok(())
    }

    fn snapshot(&self, tx: &ReadTransaction) -> Result<Vec<u8>, AppError> {
        Ok(Self::snapshot_of(tx)?)
    }

    /// Refuses bytes that are not a whole snapshot, or whose keys or convictions are not in
    /// strictly increasing order (so each state has exactly one snapshot).
    fn install(&mut self, tx: &WriteTransaction, snapshot: &[u8]) -> Result<(), AppError> {
        let refused = || AppError::Snapshot(SnapshotError);
        let ((entries, convictions), rest): (Snapshot, _) =
            postcard::take_from_bytes(snapshot).map_err(|_| refused())?;
        let unordered = entries.windows(2).any(|pair| pair[0].0 >= pair[1].0)
            || convictions
                .windows(2)
                .any(|pair| (pair[0].0, pair[0].1) >= (pair[1].0, pair[1].1));
        if unordered || !rest.is_empty() {
            return Err(refused());
        }
        let mut table = tx.open_table(ENTRIES).map_err(redb::Error::from)?;
        table.retain(|_, _| false).map_err(redb::Error::from)?;
        for (key, value) in &entries {
            table
                .insert(&key[..], &value[..])
                .map_err(redb::Error::from)?;
        }
        let mut table = tx.open_table(CONVICTED).map_err(redb::Error::from)?;
        table.retain(|_, _| false).map_err(redb::Error::from)?;
        for &(epoch, id, seq) in &convictions {
            table.insert((epoch, id), seq).map_err(redb::Error::from)?;
        }
        Ok(())
    }

    fn entries(&self, tx: &ReadTransaction) -> Result<u64, AppError> {
        Ok(Self::len(tx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A store in a temp dir, and a way to run operations through rounds of it.
    struct Harness {
        _dir: tempfile::TempDir,
        store: Store,
        app: KvStore,
    }

    impl Harness {
        fn new() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = Store::open(dir.path()).unwrap();
            Harness {
                _dir: dir,
                store,
                app: KvStore::new(),
            }
        }

        fn run(&mut self, op: &[u8]) -> Vec<u8> {
            let round = self.store.begin().unwrap();
            let result = self.app.execute(round.tx(), &[op]).unwrap().remove(0);
            self.store.commit(round).unwrap();
            result
        }

        fn op(&mut self, op: Op) -> OpResult {
            OpResult::decode(&self.run(&op.encode())).unwrap()
        }

        fn snapshot(&self) -> Vec<u8> {
            self.app.snapshot(&self.store.read().unwrap()).unwrap()
        }

        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            KvStore::get(&self.store.read().unwrap(), key).unwrap()
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn operations_do_what_they_say() {
        let mut store = Harness::new();
        assert_eq!(store.op(put("a", "1")), OpResult::Done);
        assert_eq!(
            store.op(Op::Get { key: "a".into() }),
            OpResult::Value(Some("1".into()))
        );
        let cas = |expected: Option<&str>, new: Option<&str>| Op::CompareAndSwap {
            key: "a".into(),
            expected: expected.map(Into::into),
            new: new.map(Into::into),
        };
        assert_eq!(
            store.op(cas(Some("0"), Some("2"))),
            OpResult::Mismatch {
                current: Some("1".into())
            }
        );
        assert_eq!(store.op(cas(Some("1"), Some("2"))), OpResult::Done);
        assert_eq!(store.get(b"a"), Some(b"2".to_vec()));
        assert_eq!(
            store.op(Op::Delete { key: "a".into() }),
            OpResult::Value(Some("2".into()))
        );
        assert_eq!(store.op(cas(None, Some("3"))), OpResult::Done);
        assert_eq!(store.op(cas(Some("3"), None)), OpResult::Done);
        assert_eq!(KvStore::len(&store.store.read().unwrap()).unwrap(), 0);
        assert_eq!(
            OpResult::decode(&store.run(&[0xff, 0xff, 0xff])),
            Some(OpResult::Invalid)
        );
    }

    #[test]
    fn equal_stores_have_equal_snapshots_and_snapshots_install() {
        let mut a = Harness::new();
        let mut b = Harness::new();
        for (key, value) in [("x", "1"), ("y", "2"), ("z", "3")] {
            a.op(put(key, value));
        }
        for (key, value) in [("z", "3"), ("x", "0"), ("y", "2"), ("x", "1")] {
            b.op(put(key, value));
        }
        assert_eq!(
            a.snapshot(),
            b.snapshot(),
            "history does not show in the state"
        );
        // The snapshot is the canonical encoding of the entries in key order, then of the
        // convictions (none).
        let entries = vec![
            (b"x".to_vec(), b"1".to_vec()),
            (b"y".to_vec(), b"2".to_vec()),
            (b"z".to_vec(), b"3".to_vec()),
        ];
        let none: Vec<Conviction> = Vec::new();
        assert_eq!(
            a.snapshot(),
            postcard::to_allocvec(&(entries, none)).unwrap()
        );
        let mut c = Harness::new();
        c.op(put("w", "stale"));
        let round = c.store.begin().unwrap();
        c.app.install(round.tx(), &a.snapshot()).unwrap();
        c.store.commit(round).unwrap();
        assert_eq!(c.snapshot(), a.snapshot(), "install replaces the state");
        let round = c.store.begin().unwrap();
        assert!(matches!(
            c.app.install(round.tx(), b"not a snapshot"),
            Err(AppError::Snapshot(SnapshotError))
        ));
        // The same entries or convictions out of order are not a canonical snapshot, nor is
        // a snapshot with bytes after it.
        let unordered = postcard::to_allocvec(&(
            vec![
                (b"b".to_vec(), b"1".to_vec()),
                (b"a".to_vec(), b"1".to_vec()),
            ],
            Vec::<Conviction>::new(),
        ))
        .unwrap();
        let convictions_unordered =
            postcard::to_allocvec(&(Vec::<(Vec<u8>, Vec<u8>)>::new(), vec![(0, 2, 5), (0, 1, 3)]))
                .unwrap();
        let mut trailing = a.snapshot();
        trailing.push(0);
        for bytes in [unordered, convictions_unordered, trailing] {
            assert!(matches!(
                c.app.install(round.tx(), &bytes),
                Err(AppError::Snapshot(SnapshotError))
            ));
        }
    }

    #[test]
    fn an_empty_store_has_the_empty_snapshot() {
        let store = Harness::new();
        let empty: Snapshot = (Vec::new(), Vec::new());
        assert_eq!(store.snapshot(), postcard::to_allocvec(&empty).unwrap());
    }

    /// Validator `offender`'s two commits at `seq` for different digests, in `epoch`.
    fn evidence(epoch: u64, offender: usize, seq: u64) -> Evidence {
        let vote = |digest| {
            pbft_core::Vote::new(
                &pbft_core::ChainId::from_name("kv"),
                epoch,
                pbft_core::Phase::Commit,
                (0, seq),
                pbft_core::Digest([digest; 32]),
                pbft_core::ReplicaId(offender as u16),
                &pbft_core::Keypair::from_seed(&[offender as u8; 32]),
            )
        };
        Evidence {
            epoch,
            first: vote(1),
            second: vote(2),
        }
    }

    #[test]
    fn committed_evidence_convicts_once_per_epoch_and_travels_with_the_snapshot() {
        let mut store = Harness::new();
        store.op(put("k", "v"));
        let convict = |store: &mut Harness, seq, evidence: &[Evidence]| {
            let round = store.store.begin().unwrap();
            store.app.convict(round.tx(), seq, evidence).unwrap();
            store.store.commit(round).unwrap();
        };
        convict(&mut store, 7, &[evidence(0, 2, 3), evidence(0, 2, 4)]);
        // Evidence committed again later (a peer restarted) changes nothing.
        convict(&mut store, 9, &[evidence(0, 2, 5), evidence(0, 1, 8)]);
        let convicted = KvStore::convicted(&store.store.read().unwrap()).unwrap();
        assert_eq!(convicted, vec![(0, 1, 9), (0, 2, 7)]);
        // A replica that fetches the state has the same convictions and the same snapshot.
        let mut fetched = Harness::new();
        let round = fetched.store.begin().unwrap();
        fetched.app.install(round.tx(), &store.snapshot()).unwrap();
        fetched.store.commit(round).unwrap();
        assert_eq!(fetched.snapshot(), store.snapshot());
        assert_eq!(
            KvStore::convicted(&fetched.store.read().unwrap()).unwrap(),
            convicted
        );
        assert_eq!(fetched.get(b"k"), Some(b"v".to_vec()));
    }
}
