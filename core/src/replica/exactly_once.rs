//! The exactly-once table: per client, the last request number executed and its reply.
//!
//! It is updated only in commit order, so every replica makes the same decisions. It is
//! bounded: at `max_clients` the client with the lowest last request number is forgotten (ties:
//! the one that executed longest ago, then key order) and the floor rises to that number; an
//! unknown client must number its requests above the floor, so a forgotten request can never
//! execute again.
//!
//! # Why the lowest number, not the least recently used
//!
//! The floor must cover every forgotten client's number (that is what makes forgetting safe),
//! so the order of forgetting decides who sets the floor. Forgetting the least recently used
//! client let one client set it for everyone: a single request numbered near `u64::MAX`, then
//! `max_clients` other clients (honest traffic does that on its own), and the floor sat at the
//! top of the range, refusing every new client forever. Forgetting the lowest number keeps an
//! invariant instead: **the floor is never above any remembered client's number**. To raise it
//! to X, all `max_clients` + 1 clients the table holds at one moment must be numbered X or more:
//! one client alone never can, and honest clients (numbered by time, so below an inflated
//! number) are forgotten before the inflated ones and keep the floor at honest times. For
//! clients that number by time (the [`crate::Client`] default) the lowest number is the one
//! that executed longest ago: for them the order is the least-recently-used one it replaces.
//!
//! Weighed and left: a cap on how far a number may run ahead, of the floor or of a time the
//! replicas agree on (they share no clock: each host's `now` is its own monotonic time, and the
//! floor starts at 0 while honest numbers start near 2^50 µs, so no cap relative to it tells
//! them from an attacker's); a floor keyed to batch seqs (requests that name a recent seq and
//! expire, as Solana's recent blockhash: a new field in every signed request); and floors per
//! bucket of client keys (keys are free, so an attacker makes one per bucket; with
//! least-recently-used forgetting a request per bucket poisons them all, and each bucket is
//! more state in every checkpoint). What is left: `max_clients` + 1 keys, each with a request
//! executed and all held in the table at once, can still raise the floor; see
//! [`crate::Config::max_clients`].

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::crypto::{Digest, PublicKey};
use crate::statement::Reply;

/// What the table says about a request (client, number).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freshness<'a> {
    /// Never executed: it may run.
    Fresh,
    /// The client's last executed request (or another under its number: see
    /// [`ClientTable::executed_request`]); its reply if already produced.
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
    /// That request's digest ([`crate::Request::digest`]).
    pub request: Digest,
    /// The seq of the batch that executed it (of two clients with the same number, the table
    /// forgets the one that executed first).
    pub seq: u64,
    /// What the application returned for it; `None` only between delivery and execution.
    pub result: Option<Vec<u8>>,
}

struct ClientEntry {
    last_client_seq: u64,
    /// The digest of the request executed under `last_client_seq`.
    request: Digest,
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
    /// The order of forgetting: (last number, seq it executed at, key), first goes first.
    order: BTreeSet<(u64, u64, PublicKey)>,
}

impl ClientTable {
    pub(crate) fn new(max_clients: usize) -> Self {
        ClientTable {
            max_clients,
            floor: 0,
            entries: BTreeMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Adds or replaces `client`'s row, keeping the order of forgetting in step.
    fn insert(&mut self, client: PublicKey, entry: ClientEntry) {
        let position = (entry.last_client_seq, entry.executed_at, client);
        if let Some(old) = self.entries.insert(client, entry) {
            self.order
                .remove(&(old.last_client_seq, old.executed_at, client));
        }
        self.order.insert(position);
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

    /// The highest number of `client` this table holds spent: its last executed request's,
    /// or the floor for a client it does not hold. A fresh request numbers above it.
    pub(crate) fn spent_up_to(&self, client: &PublicKey) -> u64 {
        self.entries
            .get(client)
            .map_or(self.floor, |entry| entry.last_client_seq.max(self.floor))
    }

    /// Records that (client, number), whose digest is `request`, executes at `seq`; the
    /// caller checked it is fresh. Returns the client forgotten to stay within
    /// `max_clients`, if any.
    pub(crate) fn record_execution(
        &mut self,
        (client, client_seq, request): (PublicKey, u64, Digest),
        seq: u64,
    ) -> Option<PublicKey> {
        self.insert(
            client,
            ClientEntry {
                last_client_seq: client_seq,
                request,
                executed_at: seq,
                result: None,
                reply: None,
            },
        );
        self.evict()
    }

    /// Forgets the clients with the lowest numbers until the table is within its bound;
    /// returns the last one forgotten (one insert forgets at most one, possibly the client
    /// just recorded). The floor then stays at or below every remembered number.
    fn evict(&mut self) -> Option<PublicKey> {
        let mut forgotten = None;
        while self.entries.len() > self.max_clients {
            let (_, _, lowest) = self.order.pop_first()?;
            if let Some(evicted) = self.entries.remove(&lowest) {
                self.floor = self.floor.max(evicted.last_client_seq);
                forgotten = Some(lowest);
            }
        }
        forgotten
    }

    /// The highest request number of a forgotten client: an unknown client's requests must
    /// be numbered above it. Never above a remembered client's number (see the module doc).
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
                request: entry.request,
                seq: entry.executed_at,
                result: entry.result.clone(),
            })
            .collect()
    }

    /// The table a host persisted: its floor and rows (in any order). Rows beyond
    /// `max_clients` are forgotten lowest number first, as the live table would have.
    pub(crate) fn from_records(
        max_clients: usize,
        floor: u64,
        records: impl IntoIterator<Item = ClientRecord>,
    ) -> ClientTable {
        let mut table = ClientTable::new(max_clients);
        table.floor = floor;
        for record in records {
            table.insert(
                record.client,
                ClientEntry {
                    last_client_seq: record.client_seq,
                    request: record.request,
                    executed_at: record.seq,
                    result: record.result,
                    reply: None,
                },
            );
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

    /// The seq, request digest and result of the client's last executed request, when no
    /// reply is cached (after a state transfer), to sign a reply anew.
    pub(crate) fn last_result(&self, client: &PublicKey) -> Option<(u64, Digest, Vec<u8>)> {
        let entry = self.entries.get(client)?;
        Some((entry.executed_at, entry.request, entry.result.clone()?))
    }

    /// The digest of the client's last executed request: a request under the same number
    /// with another digest is not the one that executed.
    pub(crate) fn executed_request(&self, client: &PublicKey) -> Option<Digest> {
        self.entries.get(client).map(|entry| entry.request)
    }

    /// Whether the table holds a row for `client`.
    pub(crate) fn contains(&self, client: &PublicKey) -> bool {
        self.entries.contains_key(client)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The replicated part of the table, canonically encoded for a checkpoint: the floor and
    /// (client, last number, its request's digest, seq it executed at, result) in key order.
    /// Signed replies are left out: each replica signs its own, so they differ between
    /// replicas.
    pub(crate) fn export(&self) -> Vec<u8> {
        type Row<'a> = (PublicKey, u64, Digest, u64, &'a Option<Vec<u8>>);
        let entries: Vec<Row<'_>> = self
            .entries
            .iter()
            .map(|(key, entry)| {
                (
                    *key,
                    entry.last_client_seq,
                    entry.request,
                    entry.executed_at,
                    &entry.result,
                )
            })
            .collect();
        postcard::to_allocvec(&(self.floor, entries)).unwrap_or_default()
    }

    /// A table rebuilt from [`ClientTable::export`], for a replica that installs a snapshot.
    pub(crate) fn import(bytes: &[u8], max_clients: usize) -> Option<ClientTable> {
        type Entry = (PublicKey, u64, Digest, u64, Option<Vec<u8>>);
        let (floor, entries): (u64, Vec<Entry>) = postcard::from_bytes(bytes).ok()?;
        if entries.len() > max_clients {
            return None;
        }
        let mut table = ClientTable::new(max_clients);
        table.floor = floor;
        for (client, last_client_seq, request, executed_at, result) in entries {
            table.insert(
                client,
                ClientEntry {
                    last_client_seq,
                    request,
                    executed_at,
                    result,
                    reply: None,
                },
            );
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
        table.record_execution((key(1), 5, Digest::default()), 1);
        assert_eq!(table.freshness(&key(1), 5), Freshness::LastExecuted(None));
        assert_eq!(table.freshness(&key(1), 4), Freshness::Stale);
        assert_eq!(table.freshness(&key(1), 6), Freshness::Fresh);
    }

    #[test]
    fn at_the_bound_the_lowest_numbered_client_is_forgotten_and_its_requests_stay_stale() {
        let mut table = ClientTable::new(2);
        table.record_execution((key(1), 100, Digest::default()), 1);
        table.record_execution((key(2), 7, Digest::default()), 2);
        assert_eq!(
            table.record_execution((key(3), 50, Digest::default()), 3),
            Some(key(2))
        );
        assert_eq!(table.len(), 2, "bounded");
        // Client 2 is forgotten; its executed request 7 must not run again.
        assert_eq!(table.floor(), 7);
        assert_eq!(table.freshness(&key(2), 7), Freshness::Stale);
        assert_eq!(table.freshness(&key(2), 8), Freshness::Fresh);
        // Remembered clients are unaffected by the floor.
        assert_eq!(table.freshness(&key(1), 101), Freshness::Fresh);
        // A newcomer numbered below everyone is forgotten at once, and stays refused.
        assert_eq!(
            table.record_execution((key(4), 9, Digest::default()), 4),
            Some(key(4))
        );
        assert_eq!(table.freshness(&key(4), 9), Freshness::Stale);
        assert_eq!(table.floor(), 9);
    }

    #[test]
    fn one_client_near_the_top_never_becomes_the_floor() {
        let mut table = ClientTable::new(3);
        table.record_execution((key(0), u64::MAX - 1, Digest::default()), 1);
        for n in 1..=200u8 {
            let seq = u64::from(n) + 1;
            table.record_execution((key(n), 1_000 + u64::from(n), Digest::default()), seq);
            assert!(
                table.floor() <= 1_000 + u64::from(n),
                "floor {}",
                table.floor()
            );
        }
        assert_eq!(
            table.freshness(&key(0), u64::MAX - 1),
            Freshness::LastExecuted(None)
        );
        assert_eq!(table.freshness(&key(201), 1_201), Freshness::Fresh);
    }

    /// Over pseudo-random runs: nothing executed is ever fresh again, the floor never exceeds a
    /// remembered number, and a table rebuilt from its rows and floor decides the same.
    #[test]
    fn forgetting_is_safe_and_the_floor_stays_below_every_remembered_number() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % bound
        };
        for run in 0..20 {
            let mut table = ClientTable::new(1 + run % 5);
            let mut executed: Vec<(PublicKey, u64)> = Vec::new();
            for seq in 1..=300 {
                let client = key(next(12) as u8);
                let number = match next(10) {
                    0 => u64::MAX - next(4),
                    _ => next(400),
                };
                if table.freshness(&client, number) != Freshness::Fresh {
                    continue;
                }
                table.record_execution((client, number, Digest::default()), seq);
                executed.push((client, number));
                for (client, number) in &executed {
                    assert_ne!(table.freshness(client, *number), Freshness::Fresh);
                }
                for record in table.records() {
                    assert!(table.floor() <= record.client_seq);
                }
                let rebuilt =
                    ClientTable::from_records(table.max_clients, table.floor(), table.records());
                assert_eq!(rebuilt.export(), table.export());
                assert_eq!(rebuilt.order, table.order);
            }
        }
    }
}
