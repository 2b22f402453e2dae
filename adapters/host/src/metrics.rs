//! The Prometheus metrics of a node, and a small HTTP endpoint that serves them.
//!
//! The driver copies the core's counters in after each round of inputs; transports count
//! what they refuse before the core sees it (oversized frames, unknown keys, full queues)
//! under the same `pbft_messages_rejected_total{reason}` family.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbft_core::{GatewayMetrics, Metrics};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::{NodeStats, Samples};

type Reason = Vec<(&'static str, &'static str)>;

/// A node's metrics. Cheap to update from any thread.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    ops_committed: Counter,
    batches_committed: Counter,
    batch_size: Histogram,
    commit_latency: Histogram,
    view_changes: Counter,
    timeouts: Counter,
    view: Gauge,
    executed_seq: Gauge,
    stable_checkpoint: Gauge,
    messages_received: Counter,
    signatures_verified: Counter,
    signatures_batch_verified: Counter,
    signatures_cached: Counter,
    fast_commits: Counter,
    rejected: Family<Reason, Counter>,
    fsync_latency: Histogram,
    store_commit_latency: Histogram,
    checkpoint_latency: Histogram,
    snapshot_latency: Histogram,
    void_deliveries: Counter,
    state_transfers: Counter,
    refusals_signed: Counter,
    withheld_in_recovery: Counter,
    checkpoint_mismatches: Counter,
    evidence: Counter,
    evidence_committed: Counter,
    evidence_commit_latency: Histogram,
    relay_claims_verified: Counter,
    /// Validators this node has a live connection with.
    pub peers_connected: Gauge,
    /// Clients connected to this node.
    pub clients_connected: Gauge,
    /// A gateway's own metrics (registered only by [`NodeMetrics::gateway`]).
    gateway: GatewayCounters,
    /// The core's counters as last copied, to add only what changed.
    last: Mutex<(Metrics, NodeStats)>,
}

/// What a gateway exports beside the transport's counters.
#[derive(Debug, Default)]
struct GatewayCounters {
    sessions: Gauge,
    outstanding: Gauge,
    queued: Gauge,
    shed: Family<Reason, Counter>,
    accepted: Counter,
    batches_sent: Counter,
    requests_sent: Counter,
    answered: Counter,
    retransmissions: Counter,
    signatures_verified: Counter,
    replies_refused: Counter,
    batches_attested: Counter,
    attesting: Gauge,
    last: Mutex<GatewayMetrics>,
}

/// Adds to `counter` what a cumulative count grew by since it was `old`.
fn add(counter: &Counter, new: u64, old: u64) {
    counter.inc_by(new.saturating_sub(old));
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Registers every metric under the `pbft_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pbft");
        let metrics = NodeMetrics {
            ops_committed: Counter::default(),
            batches_committed: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_latency: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            view_changes: Counter::default(),
            timeouts: Counter::default(),
            view: Gauge::default(),
            executed_seq: Gauge::default(),
            stable_checkpoint: Gauge::default(),
            messages_received: Counter::default(),
            signatures_verified: Counter::default(),
            signatures_batch_verified: Counter::default(),
            signatures_cached: Counter::default(),
            fast_commits: Counter::default(),
            rejected: Family::default(),
            fsync_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            store_commit_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            checkpoint_latency: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            snapshot_latency: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            void_deliveries: Counter::default(),
            state_transfers: Counter::default(),
            refusals_signed: Counter::default(),
            withheld_in_recovery: Counter::default(),
            checkpoint_mismatches: Counter::default(),
            evidence: Counter::default(),
            evidence_committed: Counter::default(),
            evidence_commit_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            relay_claims_verified: Counter::default(),
            peers_connected: Gauge::default(),
            clients_connected: Gauge::default(),
            gateway: GatewayCounters::default(),
            last: Mutex::new(Default::default()),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "ops_committed",
            "Requests in committed batches",
            m.ops_committed.clone(),
        );
        registry.register(
            "batches_committed",
            "Batches committed",
            m.batches_committed.clone(),
        );
        registry.register(
            "batch_size",
            "Requests per committed batch",
            m.batch_size.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "From a request's arrival at this node to its batch's commit",
            m.commit_latency.clone(),
        );
        registry.register("view_changes", "New views entered", m.view_changes.clone());
        registry.register(
            "timeouts_fired",
            "View-change timeouts that fired",
            m.timeouts.clone(),
        );
        registry.register("view", "Current view", m.view.clone());
        registry.register("executed_seq", "Last executed seq", m.executed_seq.clone());
        registry.register(
            "stable_checkpoint",
            "Stable checkpoint seq",
            m.stable_checkpoint.clone(),
        );
        registry.register(
            "messages_received",
            "Consensus messages received",
            m.messages_received.clone(),
        );
        registry.register(
            "signatures_verified",
            "Signatures verified",
            m.signatures_verified.clone(),
        );
        registry.register(
            "signatures_batch_verified",
            "Signatures verified in batches",
            m.signatures_batch_verified.clone(),
        );
        registry.register(
            "signatures_cached",
            "Client signatures in pre-prepares not checked again (verified on arrival)",
            m.signatures_cached.clone(),
        );
        registry.register(
            "fast_commits",
            "Batches committed on the fast path (every validator's prepare in, no commit round)",
            m.fast_commits.clone(),
        );
        registry.register(
            "wal_fsync_seconds",
            "Duration of each log sync",
            m.fsync_latency.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Duration of each durable commit of the application store (one per round that executed)",
            m.store_commit_latency.clone(),
        );
        registry.register(
            "checkpoint_seconds",
            "Time each checkpoint held the node's thread: committing its round (unsynced) and the replica's execution report (its batch's replies); with no snapshot thread, also the application snapshot, the state digest and the copy kept for peers, which grow with the state",
            m.checkpoint_latency.clone(),
        );
        registry.register(
            "snapshot_seconds",
            "Time the snapshot thread took per checkpoint, beside the node's thread: the application snapshot, the state digest and the copy kept for peers; grows with the state",
            m.snapshot_latency.clone(),
        );
        registry.register(
            "void_deliveries",
            "Deliveries an install overtook before they ran (skipped, by the Install contract)",
            m.void_deliveries.clone(),
        );
        registry.register(
            "state_transfers",
            "Checkpoint states fetched from peers",
            m.state_transfers.clone(),
        );
        registry.register(
            "refusals_signed",
            "Signed refusals sent to clients whose requests this validator will not order",
            m.refusals_signed.clone(),
        );
        registry.register(
            "withheld_in_recovery",
            "Signatures rollback protection withheld: before peers said what they hold signed by this key, or in views where the log had lost statements it signed",
            m.withheld_in_recovery.clone(),
        );
        registry.register(
            "checkpoint_mismatches",
            "Stable checkpoints this node's own state differed from (each one a state transfer that replaces it)",
            m.checkpoint_mismatches.clone(),
        );
        registry.register("evidence", "Equivocation evidence seen", m.evidence.clone());
        registry.register(
            "evidence_committed",
            "Equivocation evidence in the batches this node delivered (one piece may commit more than once)",
            m.evidence_committed.clone(),
        );
        registry.register(
            "evidence_commit_seconds",
            "From the first evidence of a validator's equivocation this node saw to the commit of evidence against it",
            m.evidence_commit_latency.clone(),
        );
        registry.register(
            "relay_claims_verified",
            "Relay claims whose signature was checked (a claim for a relay already held is not)",
            m.relay_claims_verified.clone(),
        );
        m.register_transport(&mut registry);
        NodeMetrics {
            registry,
            ..metrics
        }
    }

    /// Registers what a transport counts, the same for a node and a gateway: inputs refused
    /// by reason, and the connections.
    fn register_transport(&self, registry: &mut Registry) {
        registry.register(
            "messages_rejected",
            "Inputs refused, by reason",
            self.rejected.clone(),
        );
        registry.register(
            "peers_connected",
            "Validators connected",
            self.peers_connected.clone(),
        );
        registry.register(
            "clients_connected",
            "Clients connected",
            self.clients_connected.clone(),
        );
    }

    /// A gateway's metrics: what its transport refuses and its connections (as a node's),
    /// and the gateway's sessions, queue, batches, answers and refusals by reason, under
    /// `pbft_gateway_`.
    pub fn gateway() -> Self {
        let mut registry = Registry::with_prefix("pbft");
        let m = NodeMetrics::new();
        m.register_transport(&mut registry);
        let g = &m.gateway;
        let gateway = registry.sub_registry_with_prefix("gateway");
        gateway.register("sessions", "Client sessions open", g.sessions.clone());
        gateway.register(
            "outstanding",
            "Requests queued or awaiting replies",
            g.outstanding.clone(),
        );
        gateway.register(
            "queued",
            "Requests waiting for the next batch",
            g.queued.clone(),
        );
        gateway.register(
            "shed",
            "Requests and sessions refused, by reason",
            g.shed.clone(),
        );
        gateway.register(
            "accepted",
            "Requests accepted from clients",
            g.accepted.clone(),
        );
        gateway.register(
            "batches_sent",
            "Batches sent to a primary",
            g.batches_sent.clone(),
        );
        gateway.register(
            "requests_sent",
            "Requests in batches sent",
            g.requests_sent.clone(),
        );
        gateway.register(
            "requests_answered",
            "Requests answered with f + 1 matching replies",
            g.answered.clone(),
        );
        gateway.register(
            "retransmissions",
            "Requests sent again to every validator, their replies late",
            g.retransmissions.clone(),
        );
        gateway.register(
            "signatures_verified",
            "Client signatures checked",
            g.signatures_verified.clone(),
        );
        gateway.register(
            "replies_refused",
            "Replies not counted (late, duplicated, or not proving themselves)",
            g.replies_refused.clone(),
        );
        gateway.register(
            "batches_attested",
            "Batches of unsigned requests attested, one signature each",
            g.batches_attested.clone(),
        );
        gateway.register(
            "attesting",
            "1 if the gateway attests requests (gateway-attested), 0 if end to end",
            g.attesting.clone(),
        );
        NodeMetrics { registry, ..m }
    }

    /// Copies in a gateway's counters, its sessions, outstanding and queued requests, and
    /// whether it attests.
    pub fn update_gateway(
        &self,
        core: &GatewayMetrics,
        (sessions, outstanding, queued, attesting): (usize, usize, usize, bool),
    ) {
        let g = &self.gateway;
        let mut last = g.last.lock().unwrap_or_else(|e| e.into_inner());
        add(&g.accepted, core.requests_accepted, last.requests_accepted);
        add(&g.batches_sent, core.batches_sent, last.batches_sent);
        add(&g.requests_sent, core.requests_sent, last.requests_sent);
        add(&g.answered, core.requests_answered, last.requests_answered);
        add(
            &g.retransmissions,
            core.retransmissions,
            last.retransmissions,
        );
        add(
            &g.signatures_verified,
            core.signatures_verified,
            last.signatures_verified,
        );
        add(
            &g.replies_refused,
            core.replies_rejected,
            last.replies_rejected,
        );
        add(
            &g.batches_attested,
            core.batches_attested,
            last.batches_attested,
        );
        g.attesting.set(i64::from(attesting));
        for (reason, count) in &core.shed {
            let before = last.shed.get(reason).copied().unwrap_or(0);
            g.shed
                .get_or_create(&vec![("reason", *reason)])
                .inc_by(count.saturating_sub(before));
        }
        g.sessions.set(sessions as i64);
        g.outstanding.set(outstanding as i64);
        g.queued.set(queued as i64);
        *last = core.clone();
    }

    /// Counts an input a transport refused before the core saw it.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts a relay claim whose signature was checked, valid or not.
    pub fn relay_claim_verified(&self) {
        self.relay_claims_verified.inc();
    }

    /// How many inputs were refused for `reason` (core or transport).
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&vec![("reason", reason)]).get()
    }

    /// Copies in the core's and the driver's counters and the timings measured since last.
    pub fn update(
        &self,
        core: &Metrics,
        stats: NodeStats,
        position: (u64, u64, u64),
        samples: &Samples,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (old, old_stats) = &*last;
        add(
            &self.ops_committed,
            core.requests_committed,
            old.requests_committed,
        );
        add(
            &self.batches_committed,
            core.batches_committed,
            old.batches_committed,
        );
        add(&self.view_changes, core.views_changed, old.views_changed);
        add(&self.timeouts, core.timeouts_fired, old.timeouts_fired);
        add(
            &self.messages_received,
            core.messages_received,
            old.messages_received,
        );
        add(
            &self.signatures_verified,
            core.signatures_verified,
            old.signatures_verified,
        );
        add(
            &self.signatures_batch_verified,
            core.signatures_batch_verified,
            old.signatures_batch_verified,
        );
        add(
            &self.signatures_cached,
            core.signatures_cached,
            old.signatures_cached,
        );
        add(&self.fast_commits, core.fast_commits, old.fast_commits);
        add(
            &self.state_transfers,
            core.state_transfers,
            old.state_transfers,
        );
        add(
            &self.refusals_signed,
            core.refusals_signed,
            old.refusals_signed,
        );
        add(
            &self.withheld_in_recovery,
            core.withheld_in_recovery,
            old.withheld_in_recovery,
        );
        add(
            &self.checkpoint_mismatches,
            core.checkpoint_mismatches,
            old.checkpoint_mismatches,
        );
        add(&self.evidence, stats.evidence, old_stats.evidence);
        add(
            &self.evidence_committed,
            core.evidence_committed,
            old.evidence_committed,
        );
        add(
            &self.void_deliveries,
            stats.void_deliveries,
            old_stats.void_deliveries,
        );
        for (reason, count) in &core.rejected {
            let before = old.rejected.get(reason).copied().unwrap_or(0);
            if *count > before {
                self.rejected
                    .get_or_create(&vec![("reason", *reason)])
                    .inc_by(count - before);
            }
        }
        let (view, executed, stable) = position;
        self.view.set(view as i64);
        self.executed_seq.set(executed as i64);
        self.stable_checkpoint.set(stable as i64);
        for &ms in &samples.commit_ms {
            self.commit_latency.observe(ms as f64 / 1000.0);
        }
        for &seconds in &samples.sync_seconds {
            self.fsync_latency.observe(seconds);
        }
        for &seconds in &samples.store_commit_seconds {
            self.store_commit_latency.observe(seconds);
        }
        for &size in &samples.batch_sizes {
            self.batch_size.observe(size as f64);
        }
        for &seconds in &samples.checkpoint_seconds {
            self.checkpoint_latency.observe(seconds);
        }
        for &seconds in &samples.snapshot_seconds {
            self.snapshot_latency.observe(seconds);
        }
        for &ms in &samples.evidence_commit_ms {
            self.evidence_commit_latency.observe(ms as f64 / 1000.0);
        }
        *last = (core.clone(), stats);
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Scrapes served at once; a connection beyond them is closed at once and counted as
/// `metrics_busy`. A scrape every few seconds from one or two Prometheus servers needs far
/// fewer; the cap bounds the threads (and memory) anyone who can connect can make us hold.
pub const MAX_SCRAPES: usize = 16;
/// How long a connection may take to send its request, all of it: a silent or trickling
/// connection holds its thread no longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the answer may take to leave, all of it (a client that does not read).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest request read: a scraper's request line and headers take a few hundred bytes.
const MAX_REQUEST: usize = 4096;
/// The pause after a failed accept: the error (no file descriptors left, say) usually
/// persists for a while, and retrying at once would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `GET /metrics` on `addr` from threads of its own, so a slow scraper never slows
/// consensus. Returns the address bound (port 0 picks one).
///
/// `addr` is bound as given: the node's config has no default (no `metrics` field, no
/// endpoint), the local testnet writes loopback addresses, and an operator who writes a
/// non-loopback address exposes the metrics to whoever can reach it on purpose.
///
/// Each connection gets a thread of its own, at most [`MAX_SCRAPES`] at once, and must send
/// its request within [`REQUEST_TIMEOUT`]: connections that say nothing hold a thread for at
/// most that long and never delay another scrape. Plain threads rather than an HTTP crate or
/// an async runtime: the endpoint answers one fixed request a few times a minute, and std
/// gives the timeouts it needs. The accept loop never ends: a failed accept is counted as
/// `metrics_accept_failed`, logged at most once a second, and retried after a pause.
pub fn serve(addr: SocketAddr, metrics: Arc<NodeMetrics>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(|| listener.accept().map(|(s, _)| s), &metrics))?;
    Ok(bound)
}

/// Accepts connections from `accept` forever and answers each on a thread of its own.
fn accept_loop(mut accept: impl FnMut() -> io::Result<TcpStream>, metrics: &Arc<NodeMetrics>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut failures = AcceptFailures::default();
    loop {
        let stream = match accept() {
            Ok(stream) => stream,
            Err(err) => {
                failures.record(&err, metrics);
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        // Only this loop increments, so the check and the increment cannot race past the
        // cap; the scrape threads only decrement.
        if active.load(Ordering::Acquire) >= MAX_SCRAPES {
            metrics.reject("metrics_busy");
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(active.clone());
        let scrape_metrics = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-scrape".into())
            .spawn(move || {
                let _slot = slot;
                answer(stream, &scrape_metrics);
            });
        if spawned.is_err() {
            // The closure (with its slot and stream) was dropped: the slot is free again.
            metrics.reject("metrics_busy");
        }
    }
}

/// One of the [`MAX_SCRAPES`] places, given back when the scrape's thread ends (panics too).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Failed accepts: each counted, a warning at most once a second (a persistent error such
/// as EMFILE fails every accept; one line a second says so without flooding the log).
#[derive(Default)]
struct AcceptFailures {
    /// When the last warning was logged.
    warned: Option<Instant>,
    /// Failures since then, not logged.
    unlogged: u64,
}

impl AcceptFailures {
    /// Counts a failure; true if it was logged.
    fn record(&mut self, err: &io::Error, metrics: &NodeMetrics) -> bool {
        metrics.reject("metrics_accept_failed");
        let now = Instant::now();
        if self
            .warned
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return false;
        }
        tracing::warn!(error = %err, more = self.unlogged, "metrics endpoint: accept failed");
        self.warned = Some(now);
        self.unlogged = 0;
        true
    }
}

/// Reads one request within [`REQUEST_TIMEOUT`] and answers it: the metrics for
/// `GET /metrics`, 404 for anything else, nothing for a request that does not arrive whole.
fn answer(mut stream: TcpStream, metrics: &NodeMetrics) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut request = [0u8; MAX_REQUEST];
    let mut len = 0;
    // Up to the end of the headers: closing a socket with unread bytes resets it, and the
    // client could lose the answer.
    while !request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let Some(room) = request.get_mut(len..).filter(|room| !room.is_empty()) else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(room) {
            Ok(0) => break,
            Ok(read) => len += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let response = if request[..len].starts_with(b"GET /metrics") {
        let body = metrics.encode();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = write_within(
        &mut stream,
        response.as_bytes(),
        Instant::now() + RESPONSE_TIMEOUT,
    );
}

/// Writes all of `bytes` by `deadline`, however slowly the client reads.
fn write_within(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    #[test]
    fn the_endpoint_serves_metrics_and_survives_garbage_and_silence() {
        let metrics = Arc::new(NodeMetrics::new());
        metrics.reject("oversized_frame");
        let addr = serve("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
        // A connection that says nothing is dropped after its read timeout.
        let silent = TcpStream::connect(addr).unwrap();
        assert!(get(addr, b"\x00\xff garbage\r\n\r\n").starts_with("HTTP/1.1 404"));
        let response = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("pbft_messages_rejected_total{reason=\"oversized_frame\"} 1"));
        drop(silent);
    }

    #[test]
    fn a_scrape_answers_while_silent_connections_arrive_every_100_ms() {
        let metrics = Arc::new(NodeMetrics::new());
        let addr = serve("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
        let mut silent = Vec::new();
        for round in 0..20 {
            // Kept open and mute: each would hold a one-at-a-time server for its whole
            // request timeout, and the scrapes would queue behind them.
            silent.push(TcpStream::connect(addr).unwrap());
            std::thread::sleep(Duration::from_millis(50));
            let mut scrape = TcpStream::connect(addr).unwrap();
            // Half the request timeout: an answer this late means the scrape waited for a
            // silent connection to time out.
            scrape.set_read_timeout(Some(REQUEST_TIMEOUT / 2)).unwrap();
            scrape.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
            let mut response = String::new();
            let read = scrape.read_to_string(&mut response);
            assert!(
                read.is_ok() && response.starts_with("HTTP/1.1 200"),
                "scrape {round} with {} silent connections open: {read:?} {response:?}",
                silent.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
        let metrics = Arc::new(NodeMetrics::new());
        let addr = serve("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
        let held: Vec<TcpStream> = (0..MAX_SCRAPES)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let mut extra = TcpStream::connect(addr).unwrap();
        // Closed without an answer, long before the held ones time out (a server without
        // a cap would keep it waiting for its request instead).
        extra.set_read_timeout(Some(REQUEST_TIMEOUT / 2)).unwrap();
        let mut response = Vec::new();
        let read = extra.read_to_end(&mut response);
        assert!(
            matches!(&read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
        assert_eq!(metrics.rejected("metrics_busy"), 1);
        drop(held);
    }

    #[test]
    fn failed_accepts_are_counted_logged_once_a_second_and_never_spin() {
        let metrics = Arc::new(NodeMetrics::new());
        let failures = 5;
        let calls = Arc::new(AtomicUsize::new(0));
        let (done, finished) = std::sync::mpsc::channel();
        let started = Instant::now();
        let accept = {
            let calls = calls.clone();
            move || {
                if calls.fetch_add(1, Ordering::SeqCst) == failures {
                    // The loop survived every failure: report, and park here for good.
                    let _ = done.send(());
                    loop {
                        std::thread::park();
                    }
                }
                Err(io::Error::from_raw_os_error(24)) // EMFILE
            }
        };
        let looping = metrics.clone();
        std::thread::spawn(move || accept_loop(accept, &looping));
        finished.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(metrics.rejected("metrics_accept_failed"), failures as u64);
        // It paused after each failure: a loop that retried at once would have taken
        // microseconds, and on a real EMFILE would spin a core.
        assert!(started.elapsed() >= ACCEPT_BACKOFF * failures as u32);

        let mut log = AcceptFailures::default();
        let err = io::Error::from_raw_os_error(24);
        let logged: Vec<bool> = (0..3).map(|_| log.record(&err, &metrics)).collect();
        assert_eq!(logged, [true, false, false], "one warning a second at most");
    }
}
