//! The exactly-once table: per client, the last request number executed and its reply.
//!
//! It is updated only in commit order, so every replica makes the same decisions. It is bounded:
//! at `max_clients` the client that executed longest ago is forgotten and the floor rises to
//! its last request number; an unknown client must number its requests above the floor, so a
//! forgotten request can never execute again.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::crypto::PublicKey;
use crate::statement::Reply;

/// What the table says about a request (client, number).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freshness<'a> {
    /// Never executed: it may run.
    Fresh,
    /// The client's last executed request; its reply if already produced.
    LastExecuted(Option<&'a Reply>),
    /// Older than the client's last executed request, or at or below the floor.
    Stale,
}

/// One client's row of the exactly-once table, as a host keeps it durably beside its
/// application state (see [`crate::ExecutedState`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    /// The client's key.
    pub client: PublicKey,
    /// The number of its last executed request.
    pub client_seq: u64,
    /// The seq of the batch that executed it (the table forgets the oldest first).
    pub seq: u64,
    /// What the application returned for it; `None` only between delivery and execution.
    pub result: Option<Vec<u8>>,
}

struct ClientEntry {
    last_client_seq: u64,
    /// The sequence number that executed it: the eviction order.
    executed_at: u64,
    /// Its result: replicated state, so a replica that installed a checkpoint can still
    /// answer a retransmission.
    result: Option<Vec<u8>>,
    /// This replica's signed reply, once made.
    reply: Option<Reply>,
}

pub(crate) struct ClientTable {
    max_clients: usize,
    floor: u64,
    entries: BTreeMap<PublicKey, ClientEntry>,
    by_age: BTreeSet<(u64, PublicKey)>,
}

impl ClientTable {
    pub(crate) fn new(max_clients: usize) -> Self {
        ClientTable {
            max_clients,
            floor: 0,
            entries: BTreeMap::new(),
            by_age: BTreeSet::new(),
        }
    }

    pub(crate) fn freshness(&self, client: &PublicKey, client_seq: u64) -> Freshness<'_> {
        match self.entries.get(client) {
            Some(entry) if client_seq > entry.last_client_seq => Freshness::Fresh,
            Some(entry) if client_seq == entry.last_client_seq => {
                Freshness::LastExecuted(entry.reply.as_ref())
            }
            Some(_) => Freshness::Stale,
            None if client_seq > self.floor => Freshness::Fresh,
            None => Freshness::Stale,
        }
    }

    /// Records that (client, number) executes at `seq`; the caller checked it is fresh.
    /// Returns the client forgotten to stay within `max_clients`, if any.
    pub(crate) fn record_execution(
        &mut self,
        client: PublicKey,
        client_seq: u64,
        seq: u64,
    ) -> Option<PublicKey> {
        if let Some(old) = self.entries.insert(
            client,
            ClientEntry {
                last_client_seq: client_seq,
                executed_at: seq,
                result: None,
                reply: None,
            },
        ) {
            self.by_age.remove(&(old.executed_at, client));
        }
        self.by_age.insert((seq, client));
        self.evict()
    }

    /// Forgets the clients that executed longest ago until the table is within its bound;
    /// returns the last one forgotten (one insert forgets at most one).
    fn evict(&mut self) -> Option<PublicKey> {
        let mut forgotten = None;
        while self.entries.len() > self.max_clients {
            let (_, oldest) = self.by_age.pop_first()?;
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.floor = self.floor.max(evicted.last_client_seq);
                forgotten = Some(oldest);
            }
        }
        forgotten
    }

    /// The highest request number of a forgotten client: an unknown client's requests must
    /// be numbered above it.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// The table's rows, in key order, for a host to persist.
    pub(crate) fn records(&self) -> Vec<ClientRecord> {
        self.entries
            .iter()
            .map(|(client, entry)| ClientRecord {
                client: *client,
                client_seq: entry.last_client_seq,
                seq: entry.executed_at,
                result: entry.result.clone(),
            })
            .collect()
    }

    /// The table a host persisted: its floor and rows (in any order). Rows beyond
    /// `max_clients` are forgotten oldest first, as the live table would have.
    pub(crate) fn from_records(
        max_clients: usize,
        floor: u64,
        records: impl IntoIterator<Item = ClientRecord>,
    ) -> ClientTable {
        let mut table = ClientTable::new(max_clients);
        table.floor = floor;
        for record in records {
            if let Some(old) = table.entries.insert(
                record.client,
                ClientEntry {
                    last_client_seq: record.client_seq,
                    executed_at: record.seq,
                    result: record.result,
                    reply: None,
                },
            ) {
                table.by_age.remove(&(old.executed_at, record.client));
            }
            table.by_age.insert((record.seq, record.client));
        }
        table.evict();
        table
    }

    /// Keeps the reply to the client's last request, to answer retransmissions.
    pub(crate) fn store_reply(&mut self, reply: Reply) {
        if let Some(entry) = self.entries.get_mut(&reply.client)
            && entry.last_client_seq == reply.client_seq
        {
            entry.result = Some(reply.result.clone());
            entry.reply = Some(reply);
        }
    }

    /// The seq and result of the client's last executed request, when no reply is cached
    /// (after a state transfer), to sign a reply anew.
    pub(crate) fn last_result(&self, client: &PublicKey) -> Option<(u64, Vec<u8>)> {
        let entry = self.entries.get(client)?;
        Some((entry.executed_at, entry.result.clone()?))
    }

    /// Whether the table holds a row for `client`.
    pub(crate) fn contains(&self, client: &PublicKey) -> bool {
        self.entries.contains_key(client)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The replicated part of the table, canonically encoded for a checkpoint: the floor and
    /// (client, last number, seq it executed at, result) in key order. Signed replies are
    /// left out: each replica signs its own, so they differ between replicas.
    pub(crate) fn export(&self) -> Vec<u8> {
        let entries: Vec<(PublicKey, u64, u64, &Option<Vec<u8>>)> = self
            .entries
            .iter()
            .map(|(key, entry)| {
                (
                    *key,
                    entry.last_client_seq,
                    entry.executed_at,
                    &entry.result,
                )
            })
            .collect();
        postcard::to_allocvec(&(self.floor, entries)).unwrap_or_default()
    }

    /// A table rebuilt from [`ClientTable::export`], for a replica that installs a snapshot.
    pub(crate) fn import(bytes: &[u8], max_clients: usize) -> Option<ClientTable> {
        type Entry = (PublicKey, u64, u64, Option<Vec<u8>>);
        let (floor, entries): (u64, Vec<Entry>) = postcard::from_bytes(bytes).ok()?;
        if entries.len() > max_clients {
            return None;
        }
        let mut table = ClientTable::new(max_clients);
        table.floor = floor;
        for (client, last_client_seq, executed_at, result) in entries {
            table.entries.insert(
                client,
                ClientEntry {
                    last_client_seq,
                    executed_at,
                    result,
                    reply: None,
                },
            );
            table.by_age.insert((executed_at, client));
        }
        Some(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    #[test]
    fn requests_run_once_and_in_increasing_order() {
        let mut table = ClientTable::new(10);
        assert_eq!(table.freshness(&key(1), 5), Freshness::Fresh);
        table.record_execution(key(1), 5, 1);
        assert_eq!(table.freshness(&key(1), 5), Freshness::LastExecuted(None));
        assert_eq!(table.freshness(&key(1), 4), Freshness::Stale);
        assert_eq!(table.freshness(&key(1), 6), Freshness::Fresh);
    }

    #[test]
    fn at_the_bound_the_oldest_client_is_forgotten_and_its_requests_stay_stale() {
        let mut table = ClientTable::new(2);
        table.record_execution(key(1), 100, 1);
        table.record_execution(key(2), 7, 2);
        table.record_execution(key(3), 50, 3);
        assert_eq!(table.len(), 2, "bounded");
        // Client 1 is forgotten; its executed request 100 must not run again.
        assert_eq!(table.freshness(&key(1), 100), Freshness::Stale);
        assert_eq!(table.freshness(&key(1), 101), Freshness::Fresh);
        // Remembered clients are unaffected by the floor.
        assert_eq!(table.freshness(&key(2), 8), Freshness::Fresh);
    }
}
