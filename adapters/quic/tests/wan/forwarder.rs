//! A user-space link emulator: it listens where every host is reached
//! ([`Hosts::forwarded`]) and relays each packet (UDP, for QUIC) or each chunk of a stream
//! (TCP) to the host's own address after the fate the current [`Faults`] give it: a one-way
//! delay with jitter, a loss, a bandwidth cap on one host's link, or a cut (partition).
//! Jitter varies a link's delay, never its order ([`in_order`]).
//!
//! It works like a NAT: a host sees the forwarder's end of its link as the peer's address,
//! which the transports accept (validators authenticate by key, not by address).
//!
//! TCP cannot lose bytes: the forwarder terminates each connection, so a lost segment is
//! modelled as the retransmission it causes (the chunk and those behind it wait
//! [`TCP_RETRANSMIT`] more), and a cut as a link that carries nothing until it heals (the
//! chunks wait, in order), as a partition does to a TCP connection that outlives it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use super::hosts::Hosts;

/// The delay a lost TCP segment costs: Linux's minimum retransmission timeout.
pub(crate) const TCP_RETRANSMIT: Duration = Duration::from_millis(200);

/// The most a capped link queues before it drops (UDP) or holds the sender (TCP): a
/// router's buffer.
const QUEUE: Duration = Duration::from_millis(100);

/// Datagrams due on one link, each with the time it arrives.
type Datagrams = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

/// What the links do to traffic now. The default is a perfect link.
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    /// One-way delay of every link.
    pub(crate) delay: Duration,
    /// Each packet's delay varies uniformly by up to this much either way.
    pub(crate) jitter: Duration,
    /// Fraction of packets lost, on every link.
    pub(crate) loss: f64,
    /// A host whose link carries at most this many bytes a second each way.
    pub(crate) cap: Option<(usize, u64)>,
    /// Hosts cut off from every other host and from the clients.
    pub(crate) isolated: Vec<usize>,
}

/// Where a packet goes: to a host, or to a client of the test (which has no host).
type End = Option<usize>;

enum Fate {
    At(Instant),
    Lost,
    Cut,
}

/// The faults, the loss draws and the capped link's queues.
struct Links {
    faults: Faults,
    /// SplitMix64 state: a fixed seed, so a scenario loses the same packets in each run.
    draws: u64,
    /// When the capped host's link is free again: outbound, inbound.
    busy: [Instant; 2],
}

impl Links {
    fn draw(&mut self) -> f64 {
        self.draws = self.draws.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.draws;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    fn fate(&mut self, from: End, to: End, bytes: usize) -> Fate {
        let now = Instant::now();
        let cut = |end: End| end.is_some_and(|host| self.faults.isolated.contains(&host));
        if cut(from) || cut(to) {
            return Fate::Cut;
        }
        if self.faults.loss > 0.0 && self.draw() < self.faults.loss {
            return Fate::Lost;
        }
        let jitter = self.faults.jitter.as_secs_f64() * (2.0 * self.draw() - 1.0);
        let delay = Duration::from_secs_f64((self.faults.delay.as_secs_f64() + jitter).max(0.0));
        let mut sent = now;
        if let Some((capped, rate)) = self.faults.cap {
            let direction = match (from == Some(capped), to == Some(capped)) {
                (true, _) => Some(0),
                (_, true) => Some(1),
                _ => None,
            };
            if let Some(direction) = direction {
                let start = self.busy[direction].max(now);
                if start.duration_since(now) > QUEUE {
                    return Fate::Lost;
                }
                let serialise = Duration::from_secs_f64(bytes as f64 / rate as f64);
                self.busy[direction] = start + serialise;
                sent = start + serialise;
            }
        }
        Fate::At(sent + delay)
    }
}

/// The forwarder of one test run; its tasks end when it drops.
pub(crate) struct Forwarder {
    links: Arc<Mutex<Links>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens for each host `i` at (`hosts.forwarded(i)`, `ports[i]`) and relays to
    /// (`hosts.address(i)`, `ports[i]`), over UDP or TCP.
    pub(crate) async fn start(hosts: Arc<Hosts>, ports: &[u16], tcp: bool) -> Forwarder {
        let now = Instant::now();
        let links = Arc::new(Mutex::new(Links {
            faults: Faults::default(),
            draws: 0x5EED,
            busy: [now, now],
        }));
        let mut tasks = Vec::new();
        for (index, &port) in ports.iter().enumerate() {
            let listen = SocketAddr::from((hosts.forwarded(index), port));
            let target = SocketAddr::from((hosts.address(index), port));
            let links = Arc::clone(&links);
            let hosts = Arc::clone(&hosts);
            tasks.push(match tcp {
                true => {
                    let listener = TcpListener::bind(listen).await.unwrap();
                    tokio::spawn(relay_tcp(listener, target, index, hosts, links))
                }
                false => {
                    let socket = Arc::new(UdpSocket::bind(listen).await.unwrap());
                    tokio::spawn(relay_udp(socket, target, index, hosts, links))
                }
            });
        }
        Forwarder { links, tasks }
    }

    /// Applies `faults` from now on (to packets already scheduled, not).
    pub(crate) fn set(&self, faults: Faults) {
        self.links.lock().unwrap().faults = faults;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn source_host(hosts: &Hosts, source: SocketAddr) -> End {
    match source.ip() {
        IpAddr::V4(ip) => hosts.host_of(ip),
        IpAddr::V6(_) => None,
    }
}

/// Relays datagrams for host `index`: each sender gets its own socket towards the host (its
/// NAT mapping), whose replies go back from the listening socket.
async fn relay_udp(
    listening: Arc<UdpSocket>,
    target: SocketAddr,
    index: usize,
    hosts: Arc<Hosts>,
    links: Arc<Mutex<Links>>,
) {
    // The queue of each sender's own socket towards the host.
    let mut mappings: HashMap<SocketAddr, Datagrams> = HashMap::new();
    let mut buf = vec![0; 65_536];
    while let Ok((len, source)) = listening.recv_from(&mut buf).await {
        let from = source_host(&hosts, source);
        let queue = match mappings.entry(source) {
            Entry::Occupied(mapped) => mapped.into_mut(),
            Entry::Vacant(unmapped) => {
                let Ok(upstream) = UdpSocket::bind("0.0.0.0:0").await else {
                    continue;
                };
                if upstream.connect(target).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                let sending = Arc::clone(&upstream);
                let back = (Arc::clone(&listening), Arc::clone(&links));
                tokio::spawn(replies_udp(upstream, back, source, index, from));
                unmapped.insert(in_order(move |datagram| {
                    let sending = Arc::clone(&sending);
                    async move {
                        let _ = sending.send(&datagram).await;
                    }
                }))
            }
        };
        let fate = links.lock().unwrap().fate(from, Some(index), len);
        if let Fate::At(at) = fate {
            let _ = queue.send((at, buf[..len].to_vec()));
        }
    }
}

/// A queue that sends each datagram at its time, in the order queued: a path delays and
/// jitters its packets but does not reorder them (a router's queue is FIFO). Jitter drawn
/// per datagram and slept on separately would swap datagrams sent microseconds apart, which
/// QUIC's loss detection takes for losses (RFC 9002 section 6.1.1: three later packets
/// acknowledged) and answers by shrinking its congestion window.
fn in_order<F, S>(mut send: F) -> Datagrams
where
    F: FnMut(Vec<u8>) -> S + Send + 'static,
    S: Future<Output = ()> + Send,
{
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, datagram)) = due.recv().await {
            sleep_until(at).await;
            send(datagram).await;
        }
    });
    queue
}

/// Carries host `index`'s datagrams back to the sender at `source`.
async fn replies_udp(
    upstream: Arc<UdpSocket>,
    (listening, links): (Arc<UdpSocket>, Arc<Mutex<Links>>),
    source: SocketAddr,
    index: usize,
    to: End,
) {
    let queue = in_order(move |datagram| {
        let listening = Arc::clone(&listening);
        async move {
            let _ = listening.send_to(&datagram, source).await;
        }
    });
    let mut buf = vec![0; 65_536];
    loop {
        let len = match upstream.recv(&mut buf).await {
            Ok(len) => len,
            // A datagram sent before the host listened drew an ICMP port unreachable, which
            // a connected socket reports on its next receive: the mapping lives on, or the
            // sender's later datagrams would get no answer for good (a QUIC dial to a peer
            // that starts later never completed).
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        };
        let fate = links.lock().unwrap().fate(Some(index), to, len);
        if let Fate::At(at) = fate {
            let _ = queue.send((at, buf[..len].to_vec()));
        }
    }
}

/// Relays each TCP connection to host `index` as two streams of chunks, each chunk
/// delivered in order after its fate.
async fn relay_tcp(
    listener: TcpListener,
    target: SocketAddr,
    index: usize,
    hosts: Arc<Hosts>,
    links: Arc<Mutex<Links>>,
) {
    while let Ok((inbound, source)) = listener.accept().await {
        let from = source_host(&hosts, source);
        let links = Arc::clone(&links);
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            let there = pump(in_read, out_write, (from, Some(index)), Arc::clone(&links));
            let back = pump(out_read, in_write, (Some(index), from), links);
            tokio::join!(there, back);
        });
    }
}

async fn pump(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    (from, to): (End, End),
    links: Arc<Mutex<Links>>,
) {
    // Bounded: a link that holds chunks holds the sender too, as TCP's window would.
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            sleep_until(at).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    let read = async move {
        let mut buf = vec![0; 16_384];
        let mut last = Instant::now();
        while let Ok(len) = reader.read(&mut buf).await {
            if len == 0 {
                return;
            }
            let at = loop {
                let fate = links.lock().unwrap().fate(from, to, len);
                match fate {
                    Fate::At(at) => break at,
                    Fate::Lost => break Instant::now() + TCP_RETRANSMIT,
                    // Nothing crosses a cut link: try again once it may have healed.
                    Fate::Cut => sleep(Duration::from_millis(20)).await,
                }
            };
            // In order: a chunk never overtakes the one before it.
            last = last.max(at);
            if chunks.send((last, buf[..len].to_vec())).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}
