//! The `Application` contract with an application other than the key-value store: a counter
//! that adds each operation's number to a total in a table of its own. It goes through the
//! same restart path: a node killed with executions its store never made durable comes back
//! at the total its replies reported, from its own data dir, and executes each request once.

use std::sync::{Arc, Condvar, Mutex};

use pbft_core::{ChainId, Client, Config, Evidence, Keypair, Message, Outcome, ValidatorSet};
use pbft_host::kv::SnapshotError;
use pbft_host::node::{AppError, Application, Node};
use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

/// The total, under one key.
const TOTAL: TableDefinition<&str, u64> = TableDefinition::new("counter.total");

/// Adds each operation (a little-endian u64) to the total and returns the new total.
#[derive(Clone)]
struct Counter;

impl Counter {
    fn total(tx: &ReadTransaction) -> u64 {
        match tx.open_table(TOTAL) {
            Ok(table) => table.get("total").unwrap().map_or(0, |v| v.value()),
            Err(_) => 0,
        }
    }
}

impl Application for Counter {
    fn execute(&mut self, tx: &WriteTransaction, ops: &[&[u8]]) -> Result<Vec<Vec<u8>>, AppError> {
        let mut table = tx.open_table(TOTAL).map_err(redb::Error::from)?;
        let mut total = table
            .get("total")
            .map_err(redb::Error::from)?
            .map_or(0, |v| v.value());
        let mut results = Vec::new();
        for op in ops {
            let add = <[u8; 8]>::try_from(*op).map_or(0, u64::from_le_bytes);
            total = total.wrapping_add(add);
            results.push(total.to_le_bytes().to_vec());
        }
        table.insert("total", total).map_err(redb::Error::from)?;
        Ok(results)
    }

    /// A counter punishes no one: committed evidence leaves its state as it is.
    fn convict(&mut self, _: &WriteTransaction, _: u64, _: &[Evidence]) -> Result<(), AppError> {
        Ok(())
    }
    fn snapshot(&self, tx: &ReadTransaction) -> Result<Vec<u8>, AppError> {
        Ok(Counter::total(tx).to_le_bytes().to_vec())
    }

    fn install(&mut self, tx: &WriteTransaction, snapshot: &[u8]) -> Result<(), AppError> {
        let total = <[u8; 8]>::try_from(snapshot)
            .map(u64::from_le_bytes)
            .map_err(|_| AppError::Snapshot(SnapshotError))?;
        let mut table = tx.open_table(TOTAL).map_err(redb::Error::from)?;
        table.insert("total", total).map_err(redb::Error::from)?;
        Ok(())
    }

    fn entries(&self, tx: &ReadTransaction) -> Result<u64, AppError> {
        match tx.open_table(TOTAL) {
            Ok(table) => Ok(table.len().map_err(redb::Error::from)?),
            Err(_) => Ok(0),
        }
    }
}

fn chain() -> ChainId {
    ChainId::from_name("application-tests")
}

/// A one-validator network (it commits alone) over `dir`.
fn open(dir: &std::path::Path) -> (Node<Counter>, ValidatorSet) {
    let key = Keypair::from_seed(&[21; 32]);
    let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
    let mut config = Config::new(chain());
    config.checkpoint_interval = 4;
    let node = Node::open(dir, config, set.clone(), key, Counter).unwrap();
    (node, set)
}

/// Submits `add` and runs the node until the client accepts the result; returns it with the
/// request.
fn call(
    node: &mut Node<Counter>,
    client: &mut Client,
    now: &mut u64,
    add: u64,
) -> (Outcome, pbft_core::Request) {
    let request = client.request(*now, add.to_le_bytes().to_vec());
    node.submit(*now, request.clone()).unwrap();
    for _ in 0..100 {
        *now += 5;
        node.handle_timeout(*now);
        for transmit in node.flush(*now).unwrap() {
            if let Ok(Message::Reply(_)) = Message::decode(&transmit.bytes, usize::MAX)
                && let Some(outcome) = client.handle_reply(&transmit.bytes).unwrap()
            {
                return (outcome, request);
            }
        }
    }
    panic!("no reply for +{add}");
}

#[test]
fn a_second_application_restarts_from_its_own_store_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, set) = open(dir.path());
    let mut client = Client::new(chain(), Keypair::from_seed(&[22; 32]), set.clone(), 1);
    let mut now = 1;
    let mut expected = 0;
    let mut first = None;
    for add in 1..=10u64 {
        expected += add;
        let (outcome, request) = call(&mut node, &mut client, &mut now, add);
        assert_eq!(outcome.result, expected.to_le_bytes());
        first.get_or_insert(request);
    }
    // Killed: the store's transaction since its last durable commit is lost with the
    // process; the log's redo records replay it.
    drop(node);
    let (mut node, _) = open(dir.path());
    assert!(
        node.replica().executed_seq() < 10,
        "the store lagged the log (made durable at the last compaction)"
    );
    node.handle_timeout(now);
    node.flush(now).unwrap();
    assert_eq!(node.replica().executed_seq(), 10);
    assert_eq!(Counter::total(&node.read().unwrap()), expected);
    // It goes on from there, and a retransmitted old request is not executed again.
    expected += 11;
    let (outcome, _) = call(&mut node, &mut client, &mut now, 11);
    assert_eq!(outcome.result, expected.to_le_bytes());
    let old = first.expect("the first request");
    assert!(node.submit(now, old).is_err(), "refused as stale");
    node.flush(now).unwrap();
    assert_eq!(Counter::total(&node.read().unwrap()), expected);
}

/// A gate a snapshot waits at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

/// The counter, whose snapshots (taken on the node's snapshot thread) wait at a gate.
#[derive(Clone)]
struct Gated(Arc<Gate>);

impl Application for Gated {
    fn execute(&mut self, tx: &WriteTransaction, ops: &[&[u8]]) -> Result<Vec<Vec<u8>>, AppError> {
        Counter.execute(tx, ops)
    }

    fn convict(
        &mut self,
        tx: &WriteTransaction,
        seq: u64,
        evidence: &[Evidence],
    ) -> Result<(), AppError> {
        Counter.convict(tx, seq, evidence)
    }

    fn snapshot(&self, tx: &ReadTransaction) -> Result<Vec<u8>, AppError> {
        self.0.pass();
        Counter.snapshot(tx)
    }

    fn install(&mut self, tx: &WriteTransaction, snapshot: &[u8]) -> Result<(), AppError> {
        Counter.install(tx, snapshot)
    }

    fn entries(&self, tx: &ReadTransaction) -> Result<u64, AppError> {
        Counter.entries(tx)
    }
}

/// One validator whose window is one checkpoint interval (4), taking snapshots on a
/// thread: its own vote is the quorum, so a checkpoint it could not sign after a restart
/// would stop it for good.
fn open_gated(dir: &std::path::Path, gate: Arc<Gate>) -> (Node<Gated>, ValidatorSet) {
    let key = Keypair::from_seed(&[21; 32]);
    let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
    let mut config = Config::new(chain());
    config.checkpoint_interval = 4;
    config.window = 4;
    let mut node = Node::open(dir, config, set.clone(), key, Gated(gate)).unwrap();
    node.snapshots_on_thread().unwrap();
    (node, set)
}

/// As [`call`], for the gated counter. Replies to earlier requests (a restarted node replays some) are not this call's.
fn call_gated(node: &mut Node<Gated>, client: &mut Client, now: &mut u64, add: u64) -> Outcome {
    let request = client.request(*now, add.to_le_bytes().to_vec());
    node.submit(*now, request).unwrap();
    for _ in 0..100 {
        *now += 5;
        node.handle_timeout(*now);
        for transmit in node.flush(*now).unwrap() {
            if let Ok(Message::Reply(_)) = Message::decode(&transmit.bytes, usize::MAX)
                && let Ok(Some(outcome)) = client.handle_reply(&transmit.bytes)
            {
                return outcome;
            }
        }
    }
    panic!("no reply for +{add}");
}

/// A copy of `from` taken now, file by file: what a crash at this instant leaves on disk
/// (the page cache included, as a process crash does).
fn crash_copy(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            crash_copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes +5 to +12 and checks each total and that the window moved past seq 8: the
/// checkpoint at 4 became stable, which only this validator's own vote can do.
fn goes_on_past_the_checkpoint(node: &mut Node<Gated>, client: &mut Client, now: &mut u64) {
    let mut total = 10;
    for add in 5..=12u64 {
        total += add;
        let outcome = call_gated(node, client, now, add);
        assert_eq!(outcome.result, total.to_le_bytes());
        node.wait_for_snapshots(*now).unwrap();
    }
    assert!(node.replica().stable_checkpoint().seq >= 8);
}

fn opened() -> Arc<Gate> {
    let gate = Arc::new(Gate::default());
    gate.open();
    gate
}

#[test]
fn the_store_is_never_durable_past_a_checkpoint_whose_snapshot_is_outstanding() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let (mut node, set) = open_gated(dir.path(), gate.clone());
    let client_key = Keypair::from_seed(&[23; 32]);
    let mut client = Client::new(
        chain(),
        Keypair::from_seed(&client_key.seed()),
        set.clone(),
        1,
    );
    let mut now = 1;
    for add in 1..=4u64 {
        call_gated(&mut node, &mut client, &mut now, add);
    }
    // Seq 4, a checkpoint, is executed and answered; its snapshot waits at the gate. A flush
    // past the store's sync period leaves the store's durable state before seq 4.
    now += 2 * pbft_host::node::STORE_SYNC_MS;
    node.handle_timeout(now);
    node.flush(now).unwrap();
    assert_eq!(node.replica().stable_checkpoint().seq, 0, "not signed yet");

    // A crash now: back from what is on disk, it executes seq 4 again from its log, signs
    // that checkpoint this time, and its window moves on.
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    {
        let (mut restored, _) = open_gated(crashed.path(), opened());
        assert!(
            restored.replica().executed_seq() < 4,
            "the durable store stopped before the checkpoint it had not signed"
        );
        let mut client = Client::new(chain(), Keypair::from_seed(&client_key.seed()), set, 100);
        let mut later = now;
        goes_on_past_the_checkpoint(&mut restored, &mut client, &mut later);
    }

    // A node dropped instead (it stopped on an error) leaves its store as a crash would,
    // though redb makes unsynced commits durable when it closes cleanly: the same again.
    gate.open();
    drop(node);
    let (mut node, _) = open_gated(dir.path(), opened());
    assert!(node.replica().executed_seq() < 4);
    goes_on_past_the_checkpoint(&mut node, &mut client, &mut now);
    // A clean stop (every snapshot back, the store made durable) loses nothing.
    node.wait_for_snapshots(now).unwrap();
    node.flush(now).unwrap();
    node.sync_store().unwrap();
    let executed = node.replica().executed_seq();
    drop(node);
    let (node, _) = open_gated(dir.path(), opened());
    assert_eq!(node.replica().executed_seq(), executed);
}
