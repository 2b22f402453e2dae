//! The default application: a key-value store the binary serves.
//!
//! Operations and results are postcard-encoded [`Op`] and [`OpResult`]. Execution is
//! deterministic (a `BTreeMap`, no clock, no randomness), and bytes that are not an operation
//! execute as [`OpResult::Invalid`] on every replica alike. A snapshot is the canonical encoding
//! of the map, entries in key order, so equal stores give equal bytes and equal checkpoint
//! digests.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotError;

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a key-value snapshot (or keys out of order)")
    }
}

impl std::error::Error for SnapshotError {}

/// The store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        KvStore::default()
    }

    /// Executes one operation's bytes and returns the encoded result.
    pub fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        let result = match postcard::from_bytes::<Op>(op) {
            Ok(op) => self.apply(op),
            Err(_) => OpResult::Invalid,
        };
        postcard::to_allocvec(&result).unwrap_or_default()
    }

    fn apply(&mut self, op: Op) -> OpResult {
        match op {
            Op::Put { key, value } => {
                self.entries.insert(key, value);
                OpResult::Done
            }
            Op::Get { key } => OpResult::Value(self.entries.get(&key).cloned()),
            Op::Delete { key } => OpResult::Value(self.entries.remove(&key)),
            Op::CompareAndSwap { key, expected, new } => {
                let current = self.entries.get(&key).cloned();
                if current != expected {
                    return OpResult::Mismatch { current };
                }
                match new {
                    Some(value) => self.entries.insert(key, value),
                    None => self.entries.remove(&key),
                };
                OpResult::Done
            }
        }
    }

    /// The value of `key`, for local reads and tests.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The canonical snapshot: entries in key order.
    pub fn snapshot(&self) -> Vec<u8> {
        let entries: Vec<(&Vec<u8>, &Vec<u8>)> = self.entries.iter().collect();
        postcard::to_allocvec(&entries).unwrap_or_default()
    }

    /// A store from a snapshot. Refuses bytes that are not one, or whose keys are not in
    /// strictly increasing order (so each state has exactly one snapshot).
    pub fn restore(bytes: &[u8]) -> Result<KvStore, SnapshotError> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            postcard::from_bytes(bytes).map_err(|_| SnapshotError)?;
        if entries.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(SnapshotError);
        }
        Ok(KvStore {
            entries: entries.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &mut KvStore, op: Op) -> OpResult {
        OpResult::decode(&store.execute(&op.encode())).unwrap()
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn operations_do_what_they_say() {
        let mut store = KvStore::new();
        assert_eq!(run(&mut store, put("a", "1")), OpResult::Done);
        assert_eq!(
            run(&mut store, Op::Get { key: "a".into() }),
            OpResult::Value(Some("1".into()))
        );
        let cas = |expected: Option<&str>, new: Option<&str>| Op::CompareAndSwap {
            key: "a".into(),
            expected: expected.map(Into::into),
            new: new.map(Into::into),
        };
        assert_eq!(
            run(&mut store, cas(Some("0"), Some("2"))),
            OpResult::Mismatch {
                current: Some("1".into())
            }
        );
        assert_eq!(run(&mut store, cas(Some("1"), Some("2"))), OpResult::Done);
        assert_eq!(store.get(b"a"), Some(&b"2"[..]));
        assert_eq!(
            run(&mut store, Op::Delete { key: "a".into() }),
            OpResult::Value(Some("2".into()))
        );
        assert_eq!(run(&mut store, cas(None, Some("3"))), OpResult::Done);
        assert_eq!(run(&mut store, cas(Some("3"), None)), OpResult::Done);
        assert!(store.is_empty());
        assert_eq!(
            OpResult::decode(&store.execute(&[0xff, 0xff, 0xff])),
            Some(OpResult::Invalid)
        );
    }

    #[test]
    fn equal_stores_have_equal_snapshots_and_snapshots_restore() {
        let mut a = KvStore::new();
        let mut b = KvStore::new();
        for (key, value) in [("x", "1"), ("y", "2"), ("z", "3")] {
            run(&mut a, put(key, value));
        }
        for (key, value) in [("z", "3"), ("x", "0"), ("y", "2"), ("x", "1")] {
            run(&mut b, put(key, value));
        }
        assert_eq!(
            a.snapshot(),
            b.snapshot(),
            "history does not show in the state"
        );
        assert_eq!(KvStore::restore(&a.snapshot()).unwrap(), a);
        assert_eq!(KvStore::restore(b"not a snapshot"), Err(SnapshotError));
        // The same entries out of order are not a canonical snapshot.
        let unordered = postcard::to_allocvec(&vec![
            (b"b".to_vec(), b"1".to_vec()),
            (b"a".to_vec(), b"1".to_vec()),
        ])
        .unwrap();
        assert_eq!(KvStore::restore(&unordered), Err(SnapshotError));
    }
}
