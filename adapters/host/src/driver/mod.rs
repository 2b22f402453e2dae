//! Runs a [`Node`] on a thread of its own, fed through two bounded queues of [`Input`]s:
//! one for validators, one for clients.
//!
//! Transports own sockets and tasks; they admit a connection ([`admission`]), then push its
//! frames into [`Driver::input`] (see [`crate::serve`]), which waits while its queue is
//! full: back-pressure on that one stream. Both queues are bounded in frames and in bytes,
//! and their senders wait in turn (a semaphore's FIFO order), so one flooding connection
//! gets its turn like every other. The node's thread takes validators' inputs first, and a
//! client's after every [`PEERS_PER_CLIENT`] of theirs: however many client inputs wait, a
//! validator's is handled after at most one of them, and its votes leave with the round's
//! flush (a round is at most 1,024 inputs); a Byzantine validator's flood cannot shut
//! clients out either. It does everything CPU-heavy (signature checks,
//! execution, fsync) so I/O tasks never wait on it; what it sends goes out through the
//! [`router`]'s queues, and what clients ask is answered by the [`client_protocol`].

pub mod admission;
pub mod client_protocol;
pub mod router;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flume::RecvTimeoutError;
use pbft_core::PublicKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::admission::{Connections, MAX_CLIENTS, MAX_CONNECTIONS, Refusal, Role, Slot, admits};
use self::client_protocol::QueryBudget;
pub use self::client_protocol::{QUERIES_PER_KEY_PER_SECOND, QUERIES_PER_SECOND};
pub use self::router::{
    CLIENT_QUEUE, CLIENT_QUEUE_BYTES, CLIENT_QUEUES_BYTES, ClientQueue, MAX_RELAYED_CLIENTS,
    MAX_RELAYED_PER_CONNECTION, RELAY_TTL_MS, Router,
};
use crate::application::Application;
use crate::metrics::NodeMetrics;
use crate::node::{Node, NodeError};
use crate::snapshots::Outcome as SnapshotOutcome;
use crate::store::SyncOutcome;

/// Validators' inputs waiting for the node's thread, at most.
pub const PEER_INPUTS: usize = 8192;
/// Bytes of validators' inputs waiting, at most (or four of the largest frames, if more).
pub const PEER_INPUT_BYTES: usize = 64 << 20;
/// Clients' inputs waiting for the node's thread, at most.
pub const CLIENT_INPUTS: usize = 4096;
/// Bytes of clients' inputs waiting, at most (or four of the largest client frames).
pub const CLIENT_INPUT_BYTES: usize = 16 << 20;

/// Validators' inputs the node takes in a row while clients' wait, at most.
pub const PEERS_PER_CLIENT: usize = 8;

/// What a transport hands the node.
#[derive(Debug)]
pub enum Input {
    /// A frame from a validator the transport authenticated.
    Peer {
        /// Its key.
        from: PublicKey,
        /// The consensus message.
        bytes: Vec<u8>,
    },
    /// A frame from a client the transport authenticated.
    Client {
        /// Its key.
        from: PublicKey,
        /// Its connection's number ([`ClientQueue::connection`]): relays it proves end
        /// with that connection.
        connection: u64,
        /// The [`ClientFrame`](crate::wire::ClientFrame) bytes.
        bytes: Vec<u8>,
    },
    /// Stop after making everything durable.
    Shutdown,
}

impl Input {
    fn bytes(&self) -> usize {
        match self {
            Input::Peer { bytes, .. } | Input::Client { bytes, .. } => bytes.len(),
            Input::Shutdown => 0,
        }
    }
}

/// An input in a queue, holding its bytes' place in the queue's budget until the node takes
/// it.
#[derive(Debug)]
struct Queued {
    input: Input,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// One of the node's two input queues.
#[derive(Clone, Debug)]
struct Lane {
    tx: flume::Sender<Queued>,
    /// One permit per byte queued.
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

impl Lane {
    fn new(frames: usize, max_bytes: usize) -> (Lane, flume::Receiver<Queued>) {
        let (tx, rx) = flume::bounded(frames);
        let lane = Lane {
            tx,
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        };
        (lane, rx)
    }

    async fn send(&self, input: Input) -> bool {
        // A frame above the budget waits for the whole budget (the transport's framing
        // keeps frames below it; this only keeps an oversized one from waiting forever).
        let wanted = input.bytes().min(self.max_bytes) as u32;
        let Ok(bytes) = self.bytes.clone().acquire_many_owned(wanted).await else {
            return false;
        };
        let queued = Queued {
            input,
            _bytes: Some(bytes),
        };
        self.tx.send_async(queued).await.is_ok()
    }
}

/// The handle a transport feeds the node through.
#[derive(Clone, Debug)]
pub struct Driver {
    peers: Lane,
    clients: Lane,
    metrics: Arc<NodeMetrics>,
}

impl Driver {
    /// Hands an input to the node. While its queue is full (in frames or in bytes) the
    /// future waits its turn, woken when the node takes inputs: that pushes back on the one
    /// stream that sends it (its task stops reading), and no other. False once the node has
    /// stopped.
    pub async fn input(&self, input: Input) -> bool {
        match input {
            Input::Client { .. } => self.clients.send(input).await,
            Input::Peer { .. } | Input::Shutdown => self.peers.send(input).await,
        }
    }

    /// Asks the node to stop once what it has is durable.
    pub fn shutdown(&self) {
        // Blocking is fine here: shutdown happens once, and the node drains its queue.
        let _ = self.peers.tx.send(Queued {
            input: Input::Shutdown,
            _bytes: None,
        });
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }
}

/// What the node thread takes next.
enum Next {
    /// An input from a transport.
    Input(Input),
    /// A checkpoint snapshot the node's snapshot thread finished.
    Snapshot(SnapshotOutcome),
    /// A durable commit the store's sync thread finished.
    Synced(SyncOutcome),
}

/// The node thread's ends of the two queues, and of its snapshot and sync threads' results.
struct Inputs {
    peers: flume::Receiver<Queued>,
    clients: flume::Receiver<Queued>,
    /// Finished checkpoint snapshots ([`Node::finished_snapshots`]), if the node takes them
    /// on a thread.
    snapshots: Option<flume::Receiver<SnapshotOutcome>>,
    /// Durable commits the store's sync thread finished ([`Node::finished_syncs`]), if it
    /// has one.
    syncs: Option<flume::Receiver<SyncOutcome>>,
    /// Validators' inputs taken in a row since the last client's.
    peers_in_a_row: std::cell::Cell<usize>,
    /// The queues' byte budgets, closed when the node stops: a sender waiting for bytes
    /// still held by inputs no one will take then learns the node is gone.
    budgets: [Arc<Semaphore>; 2],
}

impl Drop for Inputs {
    fn drop(&mut self) {
        for budget in &self.budgets {
            budget.close();
        }
    }
}

impl Inputs {
    /// A finished sync first (what waits for it executes), then a finished snapshot (it
    /// signs a checkpoint, which frees the log), then the next input from either queue,
    /// validators' first; waits up to `wait` (forever with `None`).
    fn wait(&self, wait: Option<Duration>) -> Result<Next, RecvTimeoutError> {
        if let Some(next) = self.next() {
            return Ok(next);
        }
        let input = |queued: Result<Queued, flume::RecvError>| {
            // Both senders live in every `Driver`: one disconnected means both are.
            queued
                .map(|queued| Next::Input(queued.input))
                .map_err(|_| RecvTimeoutError::Disconnected)
        };
        let mut selector = flume::Selector::new()
            .recv(&self.peers, input)
            .recv(&self.clients, input);
        if let Some(snapshots) = &self.snapshots {
            // The snapshot thread lives as long as the node, which is waiting here.
            selector = selector.recv(snapshots, |outcome| {
                outcome
                    .map(Next::Snapshot)
                    .map_err(|_| RecvTimeoutError::Disconnected)
            });
        }
        if let Some(syncs) = &self.syncs {
            // The sync thread, too, lives as long as the node.
            selector = selector.recv(syncs, |outcome| {
                outcome
                    .map(Next::Synced)
                    .map_err(|_| RecvTimeoutError::Disconnected)
            });
        }
        match wait {
            Some(wait) => selector
                .wait_timeout(wait)
                .map_err(|_| RecvTimeoutError::Timeout)?,
            None => selector.wait(),
        }
    }

    /// A finished sync or snapshot if one waits, else [`Inputs::next_input`].
    fn next(&self) -> Option<Next> {
        if let Some(outcome) = self.syncs.as_ref().and_then(|s| s.try_recv().ok()) {
            return Some(Next::Synced(outcome));
        }
        if let Some(outcome) = self.snapshots.as_ref().and_then(|s| s.try_recv().ok()) {
            return Some(Next::Snapshot(outcome));
        }
        self.next_input().map(Next::Input)
    }

    /// A validator's input if one waits, else a client's; a client's first after
    /// [`PEERS_PER_CLIENT`] validators' in a row.
    fn next_input(&self) -> Option<Input> {
        let client_first = self.peers_in_a_row.get() >= PEERS_PER_CLIENT;
        if client_first && let Ok(queued) = self.clients.try_recv() {
            self.peers_in_a_row.set(0);
            return Some(queued.input);
        }
        if let Ok(queued) = self.peers.try_recv() {
            self.peers_in_a_row.set(self.peers_in_a_row.get() + 1);
            return Some(queued.input);
        }
        self.peers_in_a_row.set(0);
        self.clients.try_recv().ok().map(|queued| queued.input)
    }
}

impl Driver {
    /// A driver with no node behind it: whoever holds the [`DetachedInputs`] takes the
    /// inputs, validators' first, with the node's queue bounds (a gateway's thread; tests).
    pub(crate) fn detached(metrics: Arc<NodeMetrics>) -> (Driver, DetachedInputs) {
        let (peers, peer_rx) = Lane::new(PEER_INPUTS, PEER_INPUT_BYTES);
        let (clients, client_rx) = Lane::new(CLIENT_INPUTS, CLIENT_INPUT_BYTES);
        let driver = Driver {
            peers,
            clients,
            metrics,
        };
        let budgets = [driver.peers.bytes.clone(), driver.clients.bytes.clone()];
        let inputs = Inputs {
            peers: peer_rx,
            clients: client_rx,
            snapshots: None,
            syncs: None,
            peers_in_a_row: Default::default(),
            budgets,
        };
        (driver, DetachedInputs(inputs))
    }
}

/// The inputs of a [`Driver::detached`], for the thread that takes them.
pub(crate) struct DetachedInputs(Inputs);

impl DetachedInputs {
    /// The next input if one waits.
    #[cfg(test)]
    pub(crate) fn try_recv(&self) -> Option<Input> {
        self.0.next_input()
    }

    /// The next input, waiting up to `wait` (forever with `None`).
    pub(crate) fn wait(&self, wait: Option<Duration>) -> Result<Input, RecvTimeoutError> {
        match self.0.wait(wait)? {
            Next::Input(input) => Ok(input),
            // A detached driver has no snapshot or sync thread.
            Next::Snapshot(_) | Next::Synced(_) => Err(RecvTimeoutError::Timeout),
        }
    }
}

/// How often the metrics are refreshed from the node, at most.
const METRICS_EVERY: Duration = Duration::from_millis(100);
/// Inputs taken in one round before the node flushes (and syncs) once for all of them.
const ROUND: usize = 1024;

/// Starts `node` on its own thread. The thread ends on [`Driver::shutdown`], when every
/// [`Driver`] is dropped, or when the node fails (then a node must not go on signing).
pub fn spawn<A: Application + Send + 'static>(
    node: Node<A>,
    router: Arc<Router>,
) -> std::io::Result<(Driver, JoinHandle<Result<(), NodeError>>)> {
    let peer_bytes = PEER_INPUT_BYTES.max(node.max_message_bytes().saturating_mul(4));
    let (peers, peer_rx) = Lane::new(PEER_INPUTS, peer_bytes);
    let client_bytes = CLIENT_INPUT_BYTES.max(node.max_client_frame().saturating_mul(4));
    let (clients, client_rx) = Lane::new(CLIENT_INPUTS, client_bytes);
    let inputs = Inputs {
        peers: peer_rx,
        clients: client_rx,
        snapshots: node.finished_snapshots(),
        syncs: node.finished_syncs(),
        peers_in_a_row: Default::default(),
        budgets: [peers.bytes.clone(), clients.bytes.clone()],
    };
    let metrics = router.metrics().clone();
    let handle = std::thread::Builder::new()
        .name("pbft-node".into())
        .spawn(move || run(node, inputs, &router))?;
    let driver = Driver {
        peers,
        clients,
        metrics,
    };
    Ok((driver, handle))
}

/// Makes what the node's inputs produced durable, sends it, and hands the transport the
/// validators to admit and link to when they changed (an epoch began, or a change was
/// scheduled whose new validators must reach this set before the boundary).
fn send<A: Application>(node: &mut Node<A>, router: &Router, now: u64) -> Result<(), NodeError> {
    let transmits = node.flush(now)?;
    let route = || {
        for transmit in transmits {
            router.route(transmit);
        }
    };
    match node.members_changed() {
        // The round's messages reach both the validators the change adds and those it
        // removes (the boundary's checkpoint tells them).
        Some((set, newcomers)) => router.peers().set_members_around(set, newcomers, route),
        None => route(),
    }
    Ok(())
}

fn run<A: Application>(
    mut node: Node<A>,
    inputs: Inputs,
    router: &Router,
) -> Result<(), NodeError> {
    let start = Instant::now();
    // The core's clock: milliseconds since the node started (it only compares them).
    let now = || start.elapsed().as_millis() as u64 + 1;
    let mut queries = QueryBudget::default();
    // Client requests received since the last peer message, submitted together before the
    // next one or at the end of the round (batches of signature checks at a backup).
    let mut requests = Vec::new();
    let mut last_metrics = Instant::now();
    // Inputs handled since the metrics were last refreshed: refresh within METRICS_EVERY
    // even if the node then goes idle, so a scrape never shows a stale burst.
    let mut stale = false;
    // A restored replica may have deliveries waiting (its log replays what its store lacks),
    // and learns the time only from an input: give it one, so it catches up and announces
    // itself even if every peer restarted too and nothing else would wake it.
    // Rollback protection: nothing is signed until peers said what they hold signed by
    // this key (the data dir may be an old copy).
    node.check_for_rollback(now());
    node.handle_timeout(now());
    send(&mut node, router, now())?;
    loop {
        let mut wait = node
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(now())));
        if stale {
            wait = Some(wait.map_or(METRICS_EVERY, |wait| wait.min(METRICS_EVERY)));
        }
        let mut stop = false;
        let mut first = match inputs.wait(wait) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                stop = true;
                None
            }
        };
        for taken in 0..ROUND {
            // Each is taken only to be handled: one taken past the round's end would be lost.
            let next = match taken {
                0 => first.take(),
                _ => inputs.next(),
            };
            match next {
                None => break,
                Some(Next::Input(input)) => {
                    stop |= handle(&mut node, router, &mut queries, &mut requests, input, now());
                }
                Some(Next::Snapshot(outcome)) => node.snapshot_finished(now(), outcome)?,
                Some(Next::Synced(outcome)) => node.store_synced(outcome)?,
            }
            stale = true;
            if stop {
                break;
            }
        }
        let time = now();
        client_protocol::submit(&mut node, router, &mut requests, time);
        if node.poll_timeout().is_some_and(|at| at <= time) {
            node.handle_timeout(time);
        }
        send(&mut node, router, time)?;
        if stop || last_metrics.elapsed() >= METRICS_EVERY {
            let samples = node.take_samples();
            let replica = node.replica();
            let position = (
                replica.view(),
                replica.executed_seq(),
                replica.stable_checkpoint().seq,
            );
            router
                .metrics()
                .update(node.metrics(), node.stats(), position, &samples);
            last_metrics = Instant::now();
            stale = false;
        }
        if stop {
            // Checkpoints whose snapshots are being taken are signed and logged first, so
            // the store can be made durable as of everything executed (a flush may execute
            // another checkpoint: until none is left).
            loop {
                // What waited for a sync in flight executes, and its replies leave.
                node.wait_for_sync()?;
                node.wait_for_snapshots(now())?;
                send(&mut node, router, now())?;
                if node.snapshots_pending() == 0 {
                    break;
                }
            }
            return node.sync_store();
        }
    }
}

/// Feeds one input to the node; true on shutdown.
fn handle<A: Application>(
    node: &mut Node<A>,
    router: &Router,
    queries: &mut QueryBudget,
    requests: &mut Vec<(pbft_core::Request, client_protocol::Sender)>,
    input: Input,
    now: u64,
) -> bool {
    match input {
        Input::Peer { from, bytes } => {
            // Client requests that came first go first (a pre-prepare then finds their
            // signatures checked, and checks none of them again).
            client_protocol::submit(node, router, requests, now);
            let max = node.replica().config().max_message_bytes;
            let Ok(bytes) = crate::compression::expand(bytes, max) else {
                router.metrics().reject("bad_compressed_frame");
                return false;
            };
            // Rejections are counted in the core's metrics; the node goes on.
            let _ = node.handle_message(now, &from, &bytes);
        }
        Input::Client {
            from,
            connection,
            bytes,
        } => {
            let client = client_protocol::Sender {
                key: from,
                connection,
            };
            client_protocol::handle(node, router, queries, requests, client, &bytes, now);
        }
        Input::Shutdown => return true,
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvStore, Op, OpResult};
    use crate::testing::block_on;
    use crate::wire::{ClientFrame, ServerFrame};
    use pbft_core::{ChainId, Client, Config, Keypair, Message, ValidatorSet};

    fn chain() -> ChainId {
        ChainId::from_name("driver-tests")
    }

    /// A one-validator network (it commits alone) driven on its thread.
    fn single(dir: &std::path::Path) -> (Driver, JoinHandle<Result<(), NodeError>>, Arc<Router>) {
        let key = Keypair::from_seed(&[5; 32]);
        let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
        let node = Node::open(dir, Config::new(chain()), set.clone(), key, KvStore::new()).unwrap();
        let router = test_router(&set, 0);
        let (driver, thread) = spawn(node, router.clone()).unwrap();
        (driver, thread, router)
    }

    /// The router of validator `me` of `set`, whose links are never opened.
    fn test_router(set: &ValidatorSet, me: u16) -> Arc<Router> {
        let keys: Vec<PublicKey> = set.public_keys().collect();
        let me = keys[usize::from(me)];
        let metrics = Arc::new(NodeMetrics::new());
        let (peers, _links) =
            crate::peers::Peers::new(me, (keys, vec![]), [], 1 << 20, metrics.clone());
        Router::new(peers, None, metrics)
    }

    fn next(queue: &ClientQueue) -> ServerFrame {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(bytes) = queue.frames.try_recv() {
                return ServerFrame::decode(&bytes).unwrap();
            }
            assert!(Instant::now() < deadline, "no frame in 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn requests_commit_and_replies_reach_the_client_or_its_relay() {
        let dir = tempfile::tempdir().unwrap();
        let (driver, thread, router) = single(dir.path());
        let set = ValidatorSet::new(0, &[Keypair::from_seed(&[5; 32]).public_key()]).unwrap();
        let mut client = Client::new(chain(), Keypair::from_seed(&[6; 32]), set.clone(), 1);
        let direct = router.attach_client(client.public_key());
        let input = |from: PublicKey, connection: u64, frame: ClientFrame| {
            block_on(driver.input(Input::Client {
                from,
                connection,
                bytes: frame.encode(),
            }))
        };
        let put = Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let request = client.request(1, put.encode());
        let frame = ClientFrame::Message(Message::Request(request).encode());
        assert!(input(client.public_key(), direct.connection, frame));
        let ServerFrame::Message(reply) = next(&direct) else {
            panic!("expected a reply");
        };
        let outcome = client
            .handle_reply(&reply)
            .unwrap()
            .expect("f + 1 = 1 reply");
        assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));

        // A client that names a relay gets its replies there; a forged claim is refused.
        let gateway = Keypair::from_seed(&[7; 32]);
        let relayed = router.attach_client(gateway.public_key());
        let mut behind = Client::new(chain(), Keypair::from_seed(&[8; 32]), set, 1);
        let forged = ClientFrame::relay(&chain(), &gateway, &gateway.public_key());
        let ClientFrame::Relay { signature, .. } = forged else {
            unreachable!()
        };
        let claim = ClientFrame::Relay {
            client: behind.public_key(),
            signature,
        };
        let genuine = ClientFrame::relay(
            &chain(),
            &Keypair::from_seed(&[8; 32]),
            &gateway.public_key(),
        );
        let get = behind.request(1, Op::Get { key: b"k".to_vec() }.encode());
        for frame in [
            claim,
            genuine,
            ClientFrame::Message(Message::Request(get).encode()),
            ClientFrame::Status,
        ] {
            assert!(input(gateway.public_key(), relayed.connection, frame));
        }
        // The status is answered at once; the reply once the read commits.
        let (mut reply, mut status) = (None, None);
        for _ in 0..2 {
            match next(&relayed) {
                ServerFrame::Message(bytes) => reply = Some(bytes),
                ServerFrame::Status(answer) => status = Some(answer),
                ServerFrame::Proof(_)
                | ServerFrame::Refused { .. }
                | ServerFrame::Epochs { .. } => {
                    panic!("nothing else was asked for")
                }
            }
        }
        let outcome = behind
            .handle_reply(&reply.expect("the relayed reply"))
            .unwrap()
            .expect("one reply");
        assert_eq!(
            OpResult::decode(&outcome.result),
            Some(OpResult::Value(Some(b"v".to_vec())))
        );
        assert!(status.expect("the status").executed >= 1);
        driver.shutdown();
        thread.join().unwrap().unwrap();
        assert_eq!(router.metrics().rejected("bad_relay_signature"), 1);
    }

    #[test]
    fn a_request_naming_another_client_diverts_nothing_unless_its_signature_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (driver, thread, router) = single(dir.path());
        let set = ValidatorSet::new(0, &[Keypair::from_seed(&[5; 32]).public_key()]).unwrap();
        // The victim reaches the node through a gateway, which relays its signed requests.
        let mut victim = Client::new(chain(), Keypair::from_seed(&[6; 32]), set, 1);
        let gateway = Keypair::from_seed(&[8; 32]).public_key();
        let relayed = router.attach_client(gateway);
        let thief = Keypair::from_seed(&[9; 32]).public_key();
        let stolen = router.attach_client(thief);
        let input = |from: PublicKey, connection: u64, request: pbft_core::Request| {
            let frame = ClientFrame::Message(Message::Request(request).encode());
            block_on(driver.input(Input::Client {
                from,
                connection,
                bytes: frame.encode(),
            }))
        };
        let put = Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let request = victim.request(1, put.encode());
        assert!(input(gateway, relayed.connection, request.clone()));
        let ServerFrame::Message(reply) = next(&relayed) else {
            panic!("expected a reply");
        };
        assert!(victim.handle_reply(&reply).unwrap().is_some());
        // The thief repeats the victim's request (whose reply is cached) with a forged
        // signature, and sends a fresh one with a forged signature: neither moves the
        // victim's replies to the thief.
        let mut forged = request.clone();
        forged.signature = pbft_core::Signature([7; 64]);
        let mut fresh = forged.clone();
        fresh.client_seq = 2;
        assert!(input(thief, stolen.connection, forged));
        assert!(input(thief, stolen.connection, fresh));
        // The victim goes on through its gateway, and its replies still come that way.
        let request = victim.request(2, Op::Get { key: b"k".to_vec() }.encode());
        assert!(input(gateway, relayed.connection, request));
        let ServerFrame::Message(reply) = next(&relayed) else {
            panic!("expected a reply");
        };
        let outcome = victim
            .handle_reply(&reply)
            .unwrap()
            .expect("f + 1 = 1 reply");
        assert_eq!(
            OpResult::decode(&outcome.result),
            Some(OpResult::Value(Some(b"v".to_vec())))
        );
        driver.shutdown();
        thread.join().unwrap().unwrap();
        assert!(stolen.frames.is_empty(), "the thief got nothing");
        assert_eq!(router.relayed_clients(), 1, "the gateway's relay alone");
        // The repeat could not move the relay (not newer than the gateway's request), so
        // its signature was not even checked; the fresh one was, and failed.
        assert_eq!(router.metrics().rejected("bad_request_signature"), 1);
    }

    /// Validator 1 of four (a backup in view 0), driven on its thread; its peers' queues go
    /// unread.
    fn backup(dir: &std::path::Path) -> (Driver, JoinHandle<Result<(), NodeError>>, Arc<Router>) {
        let mut keys: Vec<Keypair> = (0..4u8)
            .map(|i| Keypair::from_seed(&[20 + i; 32]))
            .collect();
        let publics: Vec<PublicKey> = keys.iter().map(Keypair::public_key).collect();
        let set = ValidatorSet::new(0, &publics).unwrap();
        let key = keys.swap_remove(1);
        let node = Node::open(dir, Config::new(chain()), set.clone(), key, KvStore::new()).unwrap();
        let router = test_router(&set, 1);
        let (driver, thread) = spawn(node, router.clone()).unwrap();
        (driver, thread, router)
    }

    #[test]
    fn a_forging_connection_costs_a_backup_one_bounded_search_and_is_closed_after_16() {
        let dir = tempfile::tempdir().unwrap();
        let (driver, thread, router) = backup(dir.path());
        let client = Keypair::from_seed(&[6; 32]);
        let attached = router.attach_client(client.public_key());
        for seq in 1..=40u64 {
            let mut request = pbft_core::Request::new(&chain(), &client, seq, vec![1; 16]);
            request.signature = pbft_core::Signature([seq as u8; 64]);
            let frame = ClientFrame::Message(Message::Request(request).encode());
            // The node may close the connection's lane once it has seen enough.
            let _ = block_on(driver.input(Input::Client {
                from: client.public_key(),
                connection: attached.connection,
                bytes: frame.encode(),
            }));
        }
        // Shutdown overtakes client inputs: wait until the last forged request is dropped.
        let metrics = router.metrics();
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.rejected("from_forging_connection") < 24 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        driver.shutdown();
        thread.join().unwrap().unwrap();
        assert_eq!(
            metrics.rejected("bad_signature"),
            16,
            "checked up to the limit"
        );
        assert_eq!(metrics.rejected("forging_connection_closed"), 1);
        assert_eq!(
            metrics.rejected("from_forging_connection"),
            24,
            "the rest unchecked"
        );
        let verified: u64 = metrics
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix("pbft_signatures_verified_total "))
            .and_then(|count| count.parse().ok())
            .unwrap();
        // At worst one group of 16 batch-checked, searched (under 2.5 x 16 more), and each
        // checked alone once.
        assert!(verified <= 16 + 40 + 16, "{verified} signature checks");
    }

    #[test]
    fn validators_inputs_are_taken_before_clients_and_queues_are_bounded_in_bytes() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let key = Keypair::from_seed(&[1; 32]).public_key();
        for _ in 0..10 {
            assert!(block_on(driver.input(Input::Client {
                from: key,
                connection: 1,
                bytes: vec![1],
            })));
        }
        assert!(block_on(driver.input(Input::Peer {
            from: key,
            bytes: vec![2],
        })));
        assert!(
            matches!(inputs.try_recv(), Some(Input::Peer { .. })),
            "the validator's first, though it came last"
        );
        while inputs.try_recv().is_some() {}

        // Clients' bytes: a queue of large frames stops taking them long before its count.
        let big = || Input::Client {
            from: key,
            connection: 1,
            bytes: vec![0; 1 << 20],
        };
        for _ in 0..CLIENT_INPUT_BYTES >> 20 {
            assert!(block_on(driver.input(big())));
        }
        let woken = Arc::new(Woken(false.into()));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut waiting = std::pin::pin!(driver.input(big()));
        assert!(
            std::future::Future::poll(waiting.as_mut(), &mut cx).is_pending(),
            "16 MiB queued: the next waits"
        );
        // A validator's input does not wait behind them.
        assert!(block_on(driver.input(Input::Peer {
            from: key,
            bytes: vec![3],
        })));
        assert!(matches!(inputs.try_recv(), Some(Input::Peer { .. })));
        // The node taking a client's input makes room for the waiting one.
        assert!(matches!(inputs.try_recv(), Some(Input::Client { .. })));
        assert!(matches!(inputs.try_recv(), Some(Input::Client { .. })));
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(std::future::Future::poll(waiting.as_mut(), &mut cx).is_ready());
    }

    /// Records whether a waiting task was woken.
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_validators_flood_leaves_clients_one_input_in_every_few() {
        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let key = Keypair::from_seed(&[1; 32]).public_key();
        for _ in 0..3 {
            let client = Input::Client {
                from: key,
                connection: 1,
                bytes: vec![1],
            };
            assert!(block_on(driver.input(client)));
        }
        for _ in 0..100 {
            let peer = Input::Peer {
                from: key,
                bytes: vec![2],
            };
            assert!(block_on(driver.input(peer)));
        }
        let order: String = std::iter::from_fn(|| inputs.try_recv())
            .take(2 * (PEERS_PER_CLIENT + 1) + 1)
            .map(|input| match input {
                Input::Peer { .. } => 'p',
                _ => 'c',
            })
            .collect();
        let every = format!("{}c", "p".repeat(PEERS_PER_CLIENT));
        assert_eq!(order, format!("{every}{every}p"));
    }

    #[test]
    fn a_full_input_queue_makes_its_sender_wait_until_the_node_takes_one() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let (driver, inputs) = Driver::detached(Arc::new(NodeMetrics::new()));
        let input = || Input::Peer {
            from: Keypair::from_seed(&[1; 32]).public_key(),
            bytes: vec![1],
        };
        for _ in 0..PEER_INPUTS {
            assert!(block_on(driver.input(input())));
        }
        let woken = Arc::new(Woken(false.into()));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waiting = std::pin::pin!(driver.input(input()));
        assert!(
            waiting.as_mut().poll(&mut cx).is_pending(),
            "the queue is full"
        );
        // The node taking an input wakes the sender: it is not polled on a timer.
        assert!(inputs.try_recv().is_some());
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(true));
        drop(inputs);
        assert!(
            !block_on(driver.input(input())),
            "a stopped node takes nothing"
        );
    }
}
