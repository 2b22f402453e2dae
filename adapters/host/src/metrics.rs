//! The Prometheus metrics of a node, and a small HTTP endpoint that serves them.
//!
//! The driver copies the core's counters in after each round of inputs; transports count
//! what they refuse before the core sees it (oversized frames, unknown keys, full queues)
//! under the same `pbft_messages_rejected_total{reason}` family.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

use pbft_core::Metrics;
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
    rejected: Family<Reason, Counter>,
    fsync_latency: Histogram,
    store_commit_latency: Histogram,
    void_deliveries: Counter,
    state_transfers: Counter,
    evidence: Counter,
    /// Validators this node has a live connection with.
    pub peers_connected: Gauge,
    /// Clients connected to this node.
    pub clients_connected: Gauge,
    /// The core's counters as last copied, to add only what changed.
    last: Mutex<(Metrics, NodeStats)>,
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
            rejected: Family::default(),
            fsync_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            store_commit_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            void_deliveries: Counter::default(),
            state_transfers: Counter::default(),
            evidence: Counter::default(),
            peers_connected: Gauge::default(),
            clients_connected: Gauge::default(),
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
            "messages_rejected",
            "Inputs refused, by reason",
            m.rejected.clone(),
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
            "void_deliveries",
            "Deliveries an install overtook before they ran (skipped, by the Install contract)",
            m.void_deliveries.clone(),
        );
        registry.register(
            "state_transfers",
            "Checkpoint states fetched from peers",
            m.state_transfers.clone(),
        );
        registry.register("evidence", "Equivocation evidence seen", m.evidence.clone());
        registry.register(
            "peers_connected",
            "Validators connected",
            m.peers_connected.clone(),
        );
        registry.register(
            "clients_connected",
            "Clients connected",
            m.clients_connected.clone(),
        );
        NodeMetrics {
            registry,
            ..metrics
        }
    }

    /// Counts an input a transport refused before the core saw it.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&vec![("reason", reason)]).inc();
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
        let add = |counter: &Counter, new: u64, old: u64| {
            counter.inc_by(new.saturating_sub(old));
        };
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
            &self.state_transfers,
            core.state_transfers,
            old.state_transfers,
        );
        add(&self.evidence, stats.evidence, old_stats.evidence);
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

/// Serves `GET /metrics` on `addr` from a thread of its own, so a slow scraper never slows
/// consensus. Returns the address bound (port 0 picks one).
pub fn serve(
    addr: SocketAddr,
    metrics: std::sync::Arc<NodeMetrics>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let mut request = [0u8; 1024];
                let Ok(len) = stream.read(&mut request) else {
                    continue;
                };
                let response = if request[..len].starts_with(b"GET /metrics") {
                    let body = metrics.encode();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(response.as_bytes());
            }
        })?;
    Ok(bound)
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
        let metrics = std::sync::Arc::new(NodeMetrics::new());
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
}
