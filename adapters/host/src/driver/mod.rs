//! Runs a [`Node`] on a thread of its own, fed through a bounded queue of [`Input`]s.
//!
//! Transports own sockets and tasks; they admit a connection ([`admission`]), then push its
//! frames into [`Driver::input`] (see [`crate::serve`]), which waits while the queue is full:
//! back-pressure on that one stream. The node's thread does everything CPU-heavy (signature
//! checks, execution, fsync) so I/O tasks never wait on it; what it sends goes out through
//! the [`router`]'s queues, and what clients ask is answered by the [`client_protocol`].

pub mod admission;
pub mod client_protocol;
pub mod router;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flume::RecvTimeoutError;
use pbft_core::PublicKey;

pub use self::admission::{Connections, MAX_CLIENTS, MAX_CONNECTIONS, Refusal, Role, Slot, admits};
pub use self::client_protocol::QUERIES_PER_SECOND;
use self::client_protocol::QueryBudget;
pub use self::router::{ClientQueue, MAX_RELAYED_CLIENTS, PEER_QUEUE, PeerQueue, Router};
use crate::application::Application;
use crate::metrics::NodeMetrics;
use crate::node::{Node, NodeError};

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
        /// The [`ClientFrame`](crate::wire::ClientFrame) bytes.
        bytes: Vec<u8>,
    },
    /// Stop after making everything durable.
    Shutdown,
}

/// The handle a transport feeds the node through.
#[derive(Clone, Debug)]
pub struct Driver {
    inputs: flume::Sender<Input>,
    metrics: Arc<NodeMetrics>,
}

impl Driver {
    /// Hands an input to the node. While the queue is full the future waits, woken when the
    /// node takes an input: that pushes back on the one stream that sends it (its task stops
    /// reading), and no other. False once the node has stopped.
    pub async fn input(&self, input: Input) -> bool {
        self.inputs.send_async(input).await.is_ok()
    }

    /// [`Driver::input`] for a thread that is not an async task: blocks it while the queue
    /// is full. False once the node has stopped.
    pub fn input_blocking(&self, input: Input) -> bool {
        self.inputs.send(input).is_ok()
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

#[cfg(test)]
impl Driver {
    /// A driver with no node behind it: the test takes the inputs itself.
    pub(crate) fn detached(metrics: Arc<NodeMetrics>) -> (Driver, flume::Receiver<Input>) {
        let (inputs, taken) = flume::bounded(INPUT_QUEUE);
        (Driver { inputs, metrics }, taken)
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
    let (tx, rx) = flume::bounded(INPUT_QUEUE);
    let metrics = router.metrics().clone();
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
    inputs: flume::Receiver<Input>,
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
            None => inputs
                .recv()
                .map_err(|flume::RecvError::Disconnected| RecvTimeoutError::Disconnected),
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
                .metrics()
                .update(node.metrics(), node.stats(), position, &samples);
            last_metrics = Instant::now();
            stale = false;
        }
        if stop {
            return node.sync_store();
        }
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
    match input {
        Input::Peer { from, bytes } => {
            // Rejections are counted in the core's metrics; the node goes on.
            let _ = node.handle_message(now, &from, &bytes);
        }
        Input::Client { from, bytes } => {
            client_protocol::handle(node, router, queries, from, &bytes, now);
        }
        Input::Shutdown => return true,
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvStore, Op, OpResult};
    use crate::wire::{ClientFrame, ServerFrame};
    use pbft_core::{ChainId, Client, Config, Keypair, Message, ReplicaId, ValidatorSet};

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
        assert!(driver.input_blocking(Input::Client {
            from: client.public_key(),
            bytes: frame.encode(),
        }));
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
            assert!(driver.input_blocking(Input::Client {
                from: gateway.public_key(),
                bytes: frame.encode(),
            }));
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

    /// Records whether a waiting task was woken.
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_full_input_queue_makes_its_sender_wait_until_the_node_takes_one() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let (driver, rx) = Driver::detached(Arc::new(NodeMetrics::new()));
        let input = || Input::Peer {
            from: Keypair::from_seed(&[1; 32]).public_key(),
            bytes: vec![1],
        };
        for _ in 0..INPUT_QUEUE {
            assert!(driver.input_blocking(input()));
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
        assert!(rx.recv().is_ok());
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(true));
        assert_eq!(rx.len(), INPUT_QUEUE, "the bound holds");
        drop(rx);
        assert!(
            !driver.input_blocking(input()),
            "a stopped node takes nothing"
        );
    }
}
