//! Runs a [`Node`] on a thread of its own and routes what it sends to per-peer queues.
//!
//! Transports own sockets and tasks; they authenticate a peer, then push its frames into
//! [`Driver::input`] and drain the queues the [`Router`] hands them. The node's thread does
//! everything CPU-heavy (signature checks, execution, fsync) so I/O tasks never wait on it,
//! and every queue is bounded: a slow or hostile peer fills only its own queue, whose
//! overflow is dropped and counted (consensus retransmits what matters).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pbft_core::{Destination, Message, PublicKey, ReplicaId, ValidatorSet};

use crate::metrics::NodeMetrics;
use crate::node::{Application, Node, NodeError, Transmit};
use crate::wire::{ClientFrame, ServerFrame, relay_digest};

/// Frames waiting for one peer's connection, at most.
pub const PEER_QUEUE: usize = 4096;
/// Inputs waiting for the node's thread, at most.
pub const INPUT_QUEUE: usize = 8192;

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
        /// The [`ClientFrame`] bytes.
        bytes: Vec<u8>,
    },
    /// Stop after making everything durable.
    Shutdown,
}

/// The frames for one validator, for the transport's link to it.
pub type PeerQueue = (ReplicaId, async_channel::Receiver<Vec<u8>>);

/// Where the node's messages go: one bounded queue per validator and per connected client.
#[derive(Debug)]
pub struct Router {
    me: ReplicaId,
    validators: Vec<Option<async_channel::Sender<Vec<u8>>>>,
    clients: Mutex<Clients>,
    metrics: Arc<NodeMetrics>,
}

/// Connected clients' queues, each tagged with its connection's number.
#[derive(Debug, Default)]
struct Clients {
    next: u64,
    queues: HashMap<PublicKey, (u64, async_channel::Sender<Vec<u8>>)>,
    /// Clients whose requests came through another key's connection (a gateway or a load
    /// generator speaking for many clients): their replies go back the same way.
    via: HashMap<PublicKey, PublicKey>,
}

/// Most clients reachable through other clients' connections at once.
pub const MAX_RELAYED_CLIENTS: usize = 65_536;

/// A client's queue, as handed to the transport that writes it to the connection.
#[derive(Debug)]
pub struct ClientQueue {
    /// Identifies this connection among others of the same key.
    pub connection: u64,
    /// The frames to write.
    pub frames: async_channel::Receiver<Vec<u8>>,
}

impl Router {
    /// A router for validator `me`, and the receiving end of each other validator's queue,
    /// for the transport's sender tasks.
    pub fn new(
        validators: &ValidatorSet,
        me: ReplicaId,
        metrics: Arc<NodeMetrics>,
    ) -> (Arc<Router>, Vec<PeerQueue>) {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for index in 0..validators.len() {
            let id = ReplicaId(index as u16);
            if id == me {
                senders.push(None);
            } else {
                let (tx, rx) = async_channel::bounded(PEER_QUEUE);
                senders.push(Some(tx));
                receivers.push((id, rx));
            }
        }
        let router = Router {
            me,
            validators: senders,
            clients: Mutex::new(Clients::default()),
            metrics,
        };
        (Arc::new(router), receivers)
    }

    /// Opens the queue of a client that just connected (replacing an older connection of
    /// the same key); the transport writes what arrives on it to the client.
    pub fn attach_client(&self, key: PublicKey) -> ClientQueue {
        let (tx, rx) = async_channel::bounded(PEER_QUEUE);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.next += 1;
        let connection = clients.next;
        clients.queues.insert(key, (connection, tx));
        self.metrics
            .clients_connected
            .set(clients.queues.len() as i64);
        ClientQueue {
            connection,
            frames: rx,
        }
    }

    /// Closes a client's queue when its connection ends, unless a newer one replaced it.
    pub fn detach_client(&self, key: &PublicKey, queue: &ClientQueue) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients
            .queues
            .get(key)
            .is_some_and(|(connection, _)| *connection == queue.connection)
        {
            clients.queues.remove(key);
            clients.via.retain(|_, through| through != key);
        }
        self.metrics
            .clients_connected
            .set(clients.queues.len() as i64);
    }

    /// The metrics the router counts into.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    fn to_validator(&self, id: ReplicaId, bytes: Vec<u8>) {
        if id == self.me {
            return;
        }
        if let Some(Some(queue)) = self.validators.get(id.0 as usize)
            && queue.try_send(bytes).is_err()
        {
            self.metrics.reject("peer_queue_full");
        }
    }

    /// Routes replies for `client` through the connection of `through`, which relayed its
    /// signed request.
    fn relay(&self, client: PublicKey, through: PublicKey) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.via.len() < MAX_RELAYED_CLIENTS || clients.via.contains_key(&client) {
            clients.via.insert(client, through);
        } else {
            self.metrics.reject("too_many_relayed_clients");
        }
    }

    /// Sends a frame to a client, if it is connected here (directly or through a relay).
    pub fn to_client(&self, key: &PublicKey, frame: &ServerFrame) {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let key = match clients.queues.contains_key(key) {
            true => key,
            false => clients.via.get(key).unwrap_or(key),
        };
        if let Some((_, queue)) = clients.queues.get(key)
            && queue.try_send(frame.encode()).is_err()
        {
            self.metrics.reject("client_queue_full");
        }
    }

    fn route(&self, transmit: Transmit) {
        match transmit.to {
            Destination::Validator(id) => self.to_validator(id, transmit.bytes),
            Destination::AllValidators => {
                for index in 0..self.validators.len() {
                    self.to_validator(ReplicaId(index as u16), transmit.bytes.clone());
                }
            }
            Destination::Client(key) => {
                self.to_client(&key, &ServerFrame::Message(transmit.bytes));
            }
        }
    }
}

/// Most clients connected to one node at once; a transport refuses more.
pub const MAX_CLIENTS: usize = 4096;

/// Hands an input to the node, pausing with `pause` while its queue is full (back-pressure
/// on that one stream). False once the node has stopped.
pub async fn hand_over<P, F>(driver: &Driver, mut input: Input, pause: P) -> bool
where
    P: Fn() -> F,
    F: std::future::Future<Output = ()>,
{
    loop {
        match driver.input(input) {
            Ok(()) => return true,
            Err(Refused::Full(back)) => {
                input = back;
                pause().await;
            }
            Err(Refused::Stopped) => return false,
        }
    }
}

/// Most connections a node holds at once, handshaking or established: every client it
/// admits, plus room for its peers' connections and their reconnects.
pub const MAX_CONNECTIONS: usize = MAX_CLIENTS + 256;

/// Counts a node's open connections, so that no one can make it hold more than
/// [`MAX_CONNECTIONS`] (each costs buffers and a task) however fast they connect.
#[derive(Debug, Default)]
pub struct Connections {
    open: std::sync::atomic::AtomicUsize,
}

/// One open connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(Arc<Connections>);

impl Connections {
    /// Takes a place for a new connection, or `None` when the node holds the most it may
    /// (the transport drops the connection and counts `too_many_connections`).
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < MAX_CONNECTIONS).then_some(open + 1)
            });
        taken.ok().map(|_| Slot(self.clone()))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Whether `key` may connect as a validator (`peer`) or as a client, given `connected`
/// clients: the admission rule every transport applies before reading a byte.
pub fn admits(
    validators: &ValidatorSet,
    key: &PublicKey,
    peer: bool,
    connected: usize,
) -> Result<(), &'static str> {
    match peer {
        true if validators.id_of(key).is_some() => Ok(()),
        true => Err("unknown_key"),
        false if connected < MAX_CLIENTS => Ok(()),
        false => Err("too_many_clients"),
    }
}

/// Why [`Driver::input`] did not take an input.
#[derive(Debug)]
pub enum Refused {
    /// The node's queue is full; here is the input back.
    Full(Input),
    /// The node has stopped.
    Stopped,
}

/// The handle a transport feeds the node through.
#[derive(Clone, Debug)]
pub struct Driver {
    inputs: SyncSender<Input>,
    metrics: Arc<NodeMetrics>,
}

impl Driver {
    /// Hands an input to the node without waiting. A full queue gives the input back: the
    /// transport retries after a pause, which pushes back on that peer's stream alone.
    pub fn input(&self, input: Input) -> Result<(), Refused> {
        match self.inputs.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(input)) => Err(Refused::Full(input)),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }

    /// Asks the node to stop once what it has is durable.
    pub fn shutdown(&self) {
        // Blocking is fine here: shutdown happens once, and the node drains its queue.
        let _ = self.inputs.send(Input::Shutdown);
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
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
    let (tx, rx) = sync_channel(INPUT_QUEUE);
    let metrics = router.metrics.clone();
    let handle = std::thread::Builder::new()
        .name("pbft-node".into())
        .spawn(move || run(node, rx, &router))?;
    Ok((
        Driver {
            inputs: tx,
            metrics,
        },
        handle,
    ))
}

fn run<A: Application>(
    mut node: Node<A>,
    inputs: Receiver<Input>,
    router: &Router,
) -> Result<(), NodeError> {
    let start = Instant::now();
    // The core's clock: milliseconds since the node started (it only compares them).
    let now = || start.elapsed().as_millis() as u64 + 1;
    let mut queries = QueryBudget::default();
    let mut last_metrics = Instant::now();
    // Inputs handled since the metrics were last refreshed: refresh within METRICS_EVERY
    // even if the node then goes idle, so a scrape never shows a stale burst.
    let mut stale = false;
    // A restored replica may have deliveries waiting (its log replays what its store lacks),
    // and learns the time only from an input: give it one, so it catches up and announces
    // itself even if every peer restarted too and nothing else would wake it.
    node.handle_timeout(now());
    for transmit in node.flush(now())? {
        router.route(transmit);
    }
    loop {
        let mut wait = node
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(now())));
        if stale {
            wait = Some(wait.map_or(METRICS_EVERY, |wait| wait.min(METRICS_EVERY)));
        }
        let first = match wait {
            Some(wait) => inputs.recv_timeout(wait),
            None => inputs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut stop = false;
        match first {
            Ok(input) => {
                stale = true;
                stop |= handle(&mut node, router, &mut queries, input, now());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stop = true,
        }
        for _ in 0..ROUND {
            if stop {
                break;
            }
            match inputs.try_recv() {
                Ok(input) => stop |= handle(&mut node, router, &mut queries, input, now()),
                Err(_) => break,
            }
        }
        let time = now();
        if node.poll_timeout().is_some_and(|at| at <= time) {
            node.handle_timeout(time);
        }
        for transmit in node.flush(time)? {
            router.route(transmit);
        }
        if stop || last_metrics.elapsed() >= METRICS_EVERY {
            let samples = node.take_samples();
            let replica = node.replica();
            let position = (
                replica.view(),
                replica.executed_seq(),
                replica.stable_checkpoint().seq,
            );
            router
                .metrics
                .update(node.metrics(), node.stats(), position, &samples);
            last_metrics = Instant::now();
            stale = false;
        }
        if stop {
            return node.sync_store();
        }
    }
}

/// Status and proof queries answered per second, from all clients together: each costs
/// the node's thread up to a batch of hashes, so they get a bounded share of it.
pub const QUERIES_PER_SECOND: u32 = 100;

/// Counts the queries of the current second.
#[derive(Debug, Default)]
struct QueryBudget {
    second: u64,
    used: u32,
}

impl QueryBudget {
    fn allow(&mut self, now_ms: u64) -> bool {
        if now_ms / 1000 != self.second {
            self.second = now_ms / 1000;
            self.used = 0;
        }
        self.used += 1;
        self.used <= QUERIES_PER_SECOND
    }
}

/// Feeds one input to the node; true on shutdown.
fn handle<A: Application>(
    node: &mut Node<A>,
    router: &Router,
    queries: &mut QueryBudget,
    input: Input,
    now: u64,
) -> bool {
    let max_message = node.max_message_bytes();
    match input {
        Input::Peer { from, bytes } => {
            // Rejections are counted in the core's metrics; the node goes on.
            let _ = node.handle_message(now, &from, &bytes);
        }
        Input::Client { from, bytes } => match ClientFrame::decode(&bytes) {
            Ok(ClientFrame::Message(bytes)) => match Message::decode(&bytes, max_message) {
                Ok(Message::Request(request)) => {
                    let client = request.client;
                    if node.submit(now, request).is_ok() && client != from {
                        router.relay(client, from);
                    }
                }
                Ok(_) => router.metrics.reject("client_sent_consensus_message"),
                Err(_) => router.metrics.reject("decode"),
            },
            Ok(ClientFrame::Relay { client, signature }) => {
                let digest = relay_digest(&node.chain(), &from);
                match client
                    .verifying_key()
                    .and_then(|key| key.verify(&digest, &signature))
                {
                    Ok(()) => router.relay(client, from),
                    Err(_) => router.metrics.reject("bad_relay_signature"),
                }
            }
            Ok(ClientFrame::Status | ClientFrame::Proof { .. }) if !queries.allow(now) => {
                router.metrics.reject("queries_rate_limited");
            }
            Ok(ClientFrame::Status) => {
                router.to_client(&from, &ServerFrame::Status(node.status(now)));
            }
            Ok(ClientFrame::Proof { seq, request }) => {
                let proof = node.proof(seq, &request).map(Box::new);
                router.to_client(&from, &ServerFrame::Proof(proof));
            }
            Err(_) => router.metrics.reject("bad_client_frame"),
        },
        Input::Shutdown => return true,
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvStore, Op, OpResult};
    use crate::wire::ClientFrame;
    use pbft_core::{ChainId, Client, Config, Keypair};

    fn chain() -> ChainId {
        ChainId::from_name("driver-tests")
    }

    /// A one-validator network (it commits alone) driven on its thread.
    fn single(dir: &std::path::Path) -> (Driver, JoinHandle<Result<(), NodeError>>, Arc<Router>) {
        let key = Keypair::from_seed(&[5; 32]);
        let set = ValidatorSet::new(0, &[key.public_key()]).unwrap();
        let node = Node::open(dir, Config::new(chain()), set.clone(), key, KvStore::new()).unwrap();
        let (router, queues) = Router::new(&set, ReplicaId(0), Arc::new(NodeMetrics::new()));
        assert!(queues.is_empty(), "no peers to send to");
        let (driver, thread) = spawn(node, router.clone()).unwrap();
        (driver, thread, router)
    }

    fn next(queue: &ClientQueue) -> ServerFrame {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(bytes) = queue.frames.try_recv() {
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
        let put = Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let request = client.request(1, put.encode());
        let frame = ClientFrame::Message(Message::Request(request).encode());
        driver
            .input(Input::Client {
                from: client.public_key(),
                bytes: frame.encode(),
            })
            .unwrap();
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
            driver
                .input(Input::Client {
                    from: gateway.public_key(),
                    bytes: frame.encode(),
                })
                .unwrap();
        }
        // The status is answered at once; the reply once the read commits.
        let (mut reply, mut status) = (None, None);
        for _ in 0..2 {
            match next(&relayed) {
                ServerFrame::Message(bytes) => reply = Some(bytes),
                ServerFrame::Status(answer) => status = Some(answer),
                ServerFrame::Proof(_) => panic!("no proof was asked for"),
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
    fn queries_get_a_bounded_share_of_each_second() {
        let mut budget = QueryBudget::default();
        let allowed = (0..QUERIES_PER_SECOND + 50)
            .filter(|_| budget.allow(1_500))
            .count();
        assert_eq!(allowed, QUERIES_PER_SECOND as usize);
        assert!(budget.allow(2_000), "a new second, a new budget");
    }

    #[test]
    fn connection_slots_are_bounded_and_freed() {
        let connections = Arc::new(Connections::default());
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| connections.take().expect("below the bound"))
            .collect();
        assert!(connections.take().is_none(), "one past the bound");
        drop(slots);
        assert_eq!(connections.open(), 0);
        assert!(connections.take().is_some());
    }

    #[test]
    fn a_full_peer_queue_drops_and_counts() {
        let keys: Vec<_> = (0..4u8).map(|i| Keypair::from_seed(&[i + 1; 32])).collect();
        let public: Vec<_> = keys.iter().map(Keypair::public_key).collect();
        let set = ValidatorSet::new(0, &public).unwrap();
        let (router, queues) = Router::new(&set, ReplicaId(0), Arc::new(NodeMetrics::new()));
        assert_eq!(queues.len(), 3);
        for _ in 0..PEER_QUEUE + 10 {
            router.route(Transmit {
                to: Destination::Validator(ReplicaId(1)),
                bytes: vec![1],
            });
        }
        assert_eq!(queues[0].1.len(), PEER_QUEUE);
        assert_eq!(queues[1].1.len(), 0, "other peers are not affected");
        assert_eq!(router.metrics().rejected("peer_queue_full"), 10);
    }
}
