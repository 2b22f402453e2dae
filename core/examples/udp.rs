//! Four replicas over plain UDP sockets on loopback, one thread each, no async runtime: the
//! shape an embedder copies. A client thread commits 1,000 requests and checks every result.
//!
//! `cargo run -p pbft-core --example udp`
//!
//! Plain UDP authenticates nothing: this example names a datagram's sender by its source
//! address. A real host authenticates its peers (the project's adapters use QUIC or Noise),
//! appends each `Persist` record to a log and fsyncs it before the sends after it leave (here
//! the records are only counted), and keeps its application state durably.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pbft_core::{
    ChainId, Client, Config, Destination, Keypair, Message, Output, PublicKey, Replica,
    ValidatorSet,
};

const REPLICAS: usize = 4;
const CLIENTS: usize = 10;
const REQUESTS_PER_CLIENT: usize = 100;
/// Largest datagram read; the config keeps every message below it.
const DATAGRAM: usize = 64 << 10;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Who sits behind each address, and the reverse.
struct Directory {
    validators: Vec<(PublicKey, SocketAddr)>,
    /// Every client of the example shares one socket.
    clients: SocketAddr,
}

impl Directory {
    fn key_of(&self, addr: SocketAddr, datagram: &[u8]) -> Option<PublicKey> {
        if let Some((key, _)) = self.validators.iter().find(|(_, a)| *a == addr) {
            return Some(*key);
        }
        // A client's request names its key; nothing else may come from the client socket.
        match Message::decode(datagram, DATAGRAM) {
            Ok(Message::Request(request)) if addr == self.clients => Some(request.client),
            _ => None,
        }
    }
}

fn config(chain: ChainId) -> Config {
    // Every message must fit one datagram: small batches, small state chunks, and a window
    // small enough that a new view with a prepared certificate for each of its seqs fits too
    // (`Config::validate_for` refuses a set whose worst-case new view does not).
    Config {
        max_batch_ops: 64,
        max_batch_bytes: 32 << 10,
        max_message_bytes: 48 << 10,
        max_request_bytes: 1 << 10,
        snapshot_chunk_bytes: 16 << 10,
        window: 16,
        checkpoint_interval: 8,
        ..Config::new(chain)
    }
}

/// Runs one replica until `done`: reads datagrams until the next timeout, then acts on every
/// output in order. The application is a counter of executed operations. Returns the executed
/// seq and the records it would have logged.
fn run_replica(
    mut replica: Replica,
    socket: UdpSocket,
    directory: &Directory,
    started: Instant,
    done: &AtomicBool,
) -> Result<(u64, u64), Failure> {
    let now = || started.elapsed().as_millis() as u64;
    let mut buffer = vec![0u8; DATAGRAM];
    let (mut executed_ops, mut records) = (0u64, 0u64);
    replica.handle_timeout(now());
    while !done.load(Ordering::Relaxed) {
        let wait = replica
            .poll_timeout()
            .map_or(50, |at| at.saturating_sub(now()))
            .clamp(1, 50);
        socket.set_read_timeout(Some(Duration::from_millis(wait)))?;
        match socket.recv_from(&mut buffer) {
            Ok((len, from)) => {
                let datagram = &buffer[..len];
                if let Some(key) = directory.key_of(from, datagram) {
                    // A refused message changes nothing but a counter.
                    let _ = replica.handle_message(now(), &key, datagram);
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err.into()),
        }
        if replica.poll_timeout().is_some_and(|at| at <= now()) {
            replica.handle_timeout(now());
        }
        while let Some(output) = replica.poll_output() {
            match output {
                Output::Persist(record) => {
                    // A real host appends these bytes to its log and fsyncs them before the
                    // next send leaves.
                    let _log_entry = record.encode();
                    records += 1;
                }
                Output::Send { to, bytes } => {
                    let peers: Vec<SocketAddr> = match to {
                        Destination::Validator(id) => directory
                            .validators
                            .get(usize::from(id.0))
                            .map(|(_, addr)| *addr)
                            .into_iter()
                            .collect(),
                        Destination::AllValidators => directory
                            .validators
                            .iter()
                            .filter(|(key, _)| *key != replica_key(&replica, directory))
                            .map(|(_, addr)| *addr)
                            .collect(),
                        Destination::Client(_) => vec![directory.clients],
                        Destination::Outside(to) => directory
                            .validators
                            .iter()
                            .filter(|(key, _)| *key == to)
                            .map(|(_, addr)| *addr)
                            .collect(),
                    };
                    for peer in peers {
                        socket.send_to(&bytes, peer)?;
                    }
                }
                Output::Deliver(delivery) => {
                    let results = delivery
                        .execute
                        .iter()
                        .map(|_| {
                            executed_ops += 1;
                            executed_ops.to_le_bytes().to_vec()
                        })
                        .collect();
                    let snapshot = delivery
                        .checkpoint
                        .then(|| executed_ops.to_le_bytes().to_vec());
                    replica.executed(now(), delivery.seq, results, snapshot)?;
                }
                Output::Install(install) => {
                    let bytes: [u8; 8] = install.snapshot.as_slice().try_into()?;
                    executed_ops = u64::from_le_bytes(bytes);
                }
                other => return Err(format!("this host does not handle {other:?}").into()),
            }
        }
    }
    Ok((replica.executed_seq(), records))
}

fn replica_key(replica: &Replica, directory: &Directory) -> PublicKey {
    directory.validators[usize::from(replica.id().0)].0
}

/// Runs the clients, closed loop, until each has its results; returns how many committed.
fn run_clients(
    mut clients: Vec<Client>,
    socket: UdpSocket,
    directory: &Directory,
    started: Instant,
) -> Result<usize, Failure> {
    let now = || started.elapsed().as_millis() as u64;
    let mut left: BTreeMap<PublicKey, usize> = clients
        .iter()
        .map(|c| (c.public_key(), REQUESTS_PER_CLIENT))
        .collect();
    let by_key: BTreeMap<PublicKey, usize> = clients
        .iter()
        .enumerate()
        .map(|(index, c)| (c.public_key(), index))
        .collect();
    let send_to = |index: usize, bytes: &[u8]| -> std::io::Result<()> {
        socket
            .send_to(bytes, directory.validators[index].1)
            .map(|_| ())
    };
    for (index, client) in clients.iter_mut().enumerate() {
        let request = client.request(now(), format!("op {index}/0").into_bytes());
        send_to(
            usize::from(client.primary().0),
            &Message::Request(request).encode(),
        )?;
    }
    let mut committed = 0;
    let mut buffer = vec![0u8; DATAGRAM];
    socket.set_read_timeout(Some(Duration::from_millis(10)))?;
    // A guard against a hang (a bug), not a measure: a healthy run takes about a second.
    let deadline = started + Duration::from_secs(600);
    while committed < CLIENTS * REQUESTS_PER_CLIENT {
        if Instant::now() > deadline {
            return Err(format!("only {committed} requests committed in 600 s").into());
        }
        if let Ok((len, _)) = socket.recv_from(&mut buffer) {
            let datagram = &buffer[..len];
            let Ok(Message::Reply(reply)) = Message::decode(datagram, DATAGRAM) else {
                continue;
            };
            let Some(&index) = by_key.get(&reply.client) else {
                continue;
            };
            let client = &mut clients[index];
            if let Ok(Some(outcome)) = client.handle_reply(datagram) {
                if outcome.result.len() != 8 {
                    return Err("a result is not a counter".into());
                }
                committed += 1;
                let remaining = left.entry(client.public_key()).or_default();
                *remaining -= 1;
                if *remaining > 0 {
                    let sent = REQUESTS_PER_CLIENT - *remaining;
                    let request = client.request(now(), format!("op {index}/{sent}").into_bytes());
                    send_to(
                        usize::from(client.primary().0),
                        &Message::Request(request).encode(),
                    )?;
                }
            }
        }
        for client in &mut clients {
            if let Some(request) = client.handle_timeout(now()) {
                // Late replies: every validator gets the request.
                let bytes = Message::Request(request).encode();
                for index in 0..REPLICAS {
                    send_to(index, &bytes)?;
                }
            }
        }
    }
    Ok(committed)
}

fn main() -> Result<(), Failure> {
    let chain = ChainId::from_name("udp-example");
    let keys: Vec<Keypair> = (1..=REPLICAS as u8)
        .map(|i| Keypair::from_seed(&[i; 32]))
        .collect();
    let public: Vec<PublicKey> = keys.iter().map(Keypair::public_key).collect();
    let set = ValidatorSet::new(0, &public)?;
    let sockets: Vec<UdpSocket> = (0..REPLICAS)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let client_socket = UdpSocket::bind("127.0.0.1:0")?;
    let directory = Directory {
        validators: public
            .iter()
            .zip(&sockets)
            .map(|(key, socket)| Ok((*key, socket.local_addr()?)))
            .collect::<std::io::Result<_>>()?,
        clients: client_socket.local_addr()?,
    };
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            Client::new(
                chain,
                Keypair::from_seed(&[100 + i as u8; 32]),
                set.clone(),
                1,
            )
        })
        .collect();
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let (committed, executed) = std::thread::scope(|scope| -> Result<_, Failure> {
        let mut threads = Vec::new();
        for (key, socket) in keys.into_iter().zip(sockets) {
            let replica = Replica::new(config(chain), set.clone(), key)?;
            let (directory, done) = (&directory, &done);
            threads
                .push(scope.spawn(move || run_replica(replica, socket, directory, started, done)));
        }
        let committed = run_clients(clients, client_socket, &directory, started);
        done.store(true, Ordering::Relaxed);
        let mut executed = Vec::new();
        for thread in threads {
            executed.push(thread.join().map_err(|_| "a replica thread panicked")??);
        }
        Ok((committed?, executed))
    })?;
    let seqs: Vec<u64> = executed.iter().map(|(seq, _)| *seq).collect();
    let records: u64 = executed.iter().map(|(_, records)| *records).sum();
    println!(
        "{committed} requests committed by {REPLICAS} replicas over UDP in {} ms \
         (executed seqs {seqs:?}, {records} records to log)",
        started.elapsed().as_millis()
    );
    Ok(())
}
