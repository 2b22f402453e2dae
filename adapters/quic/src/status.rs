//! `pbft status`: where each validator is, and whether the cluster can make progress.
//!
//! The client follows the chain of epoch changes to the latest epoch any validator knows,
//! asks every validator it has an address for, and judges the cluster by two rules: at least
//! a quorum (2f + 1) of the set answers, and, if anything waits on a validator (a request, a
//! slot, a view change), some validator executed a batch within the allowed age. An idle
//! cluster commits nothing and is healthy.

use std::fmt::Write as _;
use std::time::Duration;

use pbft_host::config::Network;
use pbft_host::wire::NodeStatus;
use serde::Serialize;

use crate::client::{ClusterClient, Transport};
use crate::transport::TransportError;

/// The least time the status questions get after the epoch questions took theirs.
const STATUS_AT_LEAST: Duration = Duration::from_millis(300);

/// What `pbft status` found.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    /// The latest epoch the client followed the chain to.
    pub epoch: u64,
    /// Epoch changes followed since genesis.
    pub epoch_changes: usize,
    /// Validators in that epoch's set.
    pub validators: usize,
    /// Validators needed to commit (2f + 1).
    pub quorum: usize,
    /// Validators of the set that answered.
    pub answering: usize,
    /// The highest executed seq any validator reported.
    pub highest_executed: u64,
    /// One row per validator the client asked, then the set's validators it has no
    /// address for.
    pub rows: Vec<Row>,
    /// Whether the cluster can make progress (no `problems`).
    pub healthy: bool,
    /// Why not, for a person.
    pub problems: Vec<String>,
}

/// One validator, as it answered.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Its public key, in hex.
    pub key: String,
    /// Whether its key is in the set of the latest epoch.
    pub in_set: bool,
    /// Whether the network's config gives its address.
    pub addressed: bool,
    /// What it said; `None` if it did not answer in time.
    pub answer: Option<Answer>,
    /// Whether it answered in a form this build cannot read (most likely another protocol
    /// version): it counts as not answering.
    pub unreadable: bool,
}

/// A validator's answer, with what the client derives from it.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// Primary, backup, view change (waiting for a new view), recovering (rollback
    /// protection waits for its peers; it signs nothing), or retired.
    pub role: &'static str,
    /// Its id in its epoch's set.
    pub id: u32,
    /// Its epoch.
    pub epoch: u64,
    /// Its view.
    pub view: u64,
    /// The primary of its view.
    pub primary: u32,
    /// The last seq it executed.
    pub executed: u64,
    /// Its stable checkpoint.
    pub stable: u64,
    /// Seqs behind the highest executed seq any validator reported.
    pub lag: u64,
    /// Validators it has a connection to.
    pub peers_connected: u32,
    /// Milliseconds since it last executed a batch (or since it started).
    pub since_commit_ms: u64,
    /// Whether anything waits on it (a request, a slot, a view change, a checkpoint).
    pub waiting: bool,
}

/// Asks every validator `network` names where it is (each within `timeout`), and judges
/// the cluster: unhealthy if fewer than a quorum of the set answer, or if something waits
/// and no validator executed a batch for `max_commit_age`.
///
/// # Errors
///
/// The client cannot open its connections.
pub async fn status(
    network: &Network,
    transport: Transport,
    timeout: Duration,
    max_commit_age: Duration,
) -> Result<ClusterStatus, TransportError> {
    let keypair = pbft_core::Keypair::from_seed(
        &pbft_host::config::random_seed().map_err(TransportError::Io)?,
    );
    let mut client = ClusterClient::connect(transport, network, keypair)?;
    let started = std::time::Instant::now();
    let (followed, _) = client.follow_epochs(timeout).await;
    let set = client.validators().clone();
    let targets = client.targets().to_vec();
    // A validator that did not answer about epochs is not waited for twice: the statuses
    // get what is left of the time, and at least enough for a live validator to answer.
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(STATUS_AT_LEAST);
    let answers = client.statuses(left).await;
    let highest_executed = answers
        .iter()
        .flatten()
        .map(|s| s.executed)
        .max()
        .unwrap_or(0);
    let mut rows: Vec<Row> = targets
        .iter()
        .zip(answers)
        .enumerate()
        .map(|(index, (key, answer))| Row {
            key: key.to_string(),
            in_set: set.id_of(key).is_some(),
            addressed: true,
            unreadable: answer.is_none() && client.unreadable(index),
            answer: answer.map(|status| Answer {
                role: role(&status),
                id: status.id,
                epoch: status.epoch,
                view: status.view,
                primary: status.primary,
                executed: status.executed,
                stable: status.stable,
                lag: highest_executed.saturating_sub(status.executed),
                peers_connected: status.peers_connected,
                since_commit_ms: status.since_commit_ms,
                waiting: status.waiting,
            }),
        })
        .collect();
    for key in set.public_keys().filter(|key| !targets.contains(key)) {
        rows.push(Row {
            key: key.to_string(),
            in_set: true,
            addressed: false,
            answer: None,
            unreadable: false,
        });
    }
    let answering = rows
        .iter()
        .filter(|row| row.in_set && row.answer.is_some())
        .count();
    let problems = judge(&rows, (set.len(), set.quorum()), max_commit_age);
    Ok(ClusterStatus {
        epoch: set.epoch(),
        epoch_changes: followed.len(),
        validators: set.len(),
        quorum: set.quorum(),
        answering,
        highest_executed,
        healthy: problems.is_empty(),
        problems,
        rows,
    })
}

/// Why the cluster cannot make progress, from the rows of a set of `size` whose `quorum`
/// commits: too few of the set answer, or work waits and no validator executed a batch for
/// `max_commit_age`. Empty if it can.
fn judge(rows: &[Row], (size, quorum): (usize, usize), max_commit_age: Duration) -> Vec<String> {
    let answering = rows
        .iter()
        .filter(|row| row.in_set && row.answer.is_some())
        .count();
    let mut problems = Vec::new();
    if answering < quorum {
        problems.push(format!(
            "only {answering} of the set's {size} validators answer; committing needs {quorum}"
        ));
    }
    let unreadable = rows.iter().filter(|row| row.unreadable).count();
    if unreadable > 0 {
        problems.push(format!(
            "{unreadable} answered in a form this pbft cannot read (another version?): run one version on every node and here"
        ));
    }
    let answered = || rows.iter().filter_map(|row| row.answer.as_ref());
    let freshest = answered().map(|a| a.since_commit_ms).min();
    let limit = max_commit_age.as_millis() as u64;
    if let Some(freshest) = freshest
        && answered().any(|a| a.waiting)
        && freshest > limit
    {
        problems.push(format!(
            "work is waiting and no validator executed a batch for {} (allowed: {})",
            seconds(freshest),
            seconds(limit)
        ));
    }
    problems
}

fn role(status: &NodeStatus) -> &'static str {
    match (status.retired, status.in_view, status.id == status.primary) {
        (true, _, _) => "retired",
        _ if status.recovering => "recovering",
        (false, false, _) => "view change",
        (false, true, true) => "primary",
        (false, true, false) => "backup",
    }
}

/// Milliseconds as seconds, for a person.
fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

impl ClusterStatus {
    /// The status as a table, with a verdict line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "epoch {} ({} epoch changes since genesis): {} validators, quorum {}",
            self.epoch, self.epoch_changes, self.validators, self.quorum
        );
        let _ = writeln!(
            out,
            "{:<16} {:>3} {:<11} {:>5} {:>6} {:>7} {:>9} {:>9} {:>6} {:>5} {:>11}",
            "validator",
            "id",
            "role",
            "epoch",
            "view",
            "primary",
            "executed",
            "stable",
            "lag",
            "peers",
            "last commit"
        );
        for row in &self.rows {
            let short = row.key.get(..16).unwrap_or(&row.key);
            let note = match (row.in_set, row.addressed) {
                (true, true) => String::new(),
                (false, _) => "  (not in the set)".into(),
                (true, false) => format!(
                    "  in the set, but the config gives no address: add [[peers]] with key = \"{}\" and address = \"host:port\"",
                    row.key
                ),
            };
            match &row.answer {
                Some(a) => {
                    let note = match a.role {
                        "recovering" => format!(
                            "{note}  (rollback protection: it asks its peers what it signed before and signs nothing until they answer)"
                        ),
                        _ => note,
                    };
                    let _ = writeln!(
                        out,
                        "{short:<16} {:>3} {:<11} {:>5} {:>6} {:>7} {:>9} {:>9} {:>6} {:>5} {:>11}{note}",
                        a.id,
                        a.role,
                        a.epoch,
                        a.view,
                        a.primary,
                        a.executed,
                        a.stable,
                        a.lag,
                        a.peers_connected,
                        match a.executed {
                            // Its age counts from the node's start: not a commit's.
                            0 => "never".into(),
                            _ => format!("{} ago", seconds(a.since_commit_ms)),
                        },
                    );
                }
                None if row.unreadable => {
                    let _ = writeln!(
                        out,
                        "{short:<16} answers in a form this pbft cannot read: another version? (upgrade the nodes and this tool together){note}"
                    );
                }
                None if row.addressed => {
                    let _ = writeln!(out, "{short:<16} no answer{note}");
                }
                None => {
                    let _ = writeln!(out, "{short:<16}{note}");
                }
            }
        }
        match self.healthy {
            true => {
                let _ = writeln!(
                    out,
                    "healthy: {} of {} validators answer, highest executed seq {}",
                    self.answering, self.validators, self.highest_executed
                );
            }
            false => {
                for problem in &self.problems {
                    let _ = writeln!(out, "UNHEALTHY: {problem}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(since_commit_ms: u64, waiting: bool) -> Row {
        Row {
            key: "k".into(),
            in_set: true,
            addressed: true,
            unreadable: false,
            answer: Some(Answer {
                role: "backup",
                id: 0,
                epoch: 0,
                view: 0,
                primary: 0,
                executed: 9,
                stable: 0,
                lag: 0,
                peers_connected: 3,
                since_commit_ms,
                waiting,
            }),
        }
    }

    #[test]
    fn a_node_whose_rollback_protection_waits_shows_as_recovering() {
        let mut status = NodeStatus {
            id: 1,
            epoch: 0,
            validators: 4,
            view: 1,
            executed: 0,
            stable: 0,
            state_seq: 0,
            state: Default::default(),
            primary: 1,
            in_view: true,
            retired: false,
            recovering: false,
            peers_connected: 0,
            waiting: false,
            since_commit_ms: 0,
        };
        assert_eq!(role(&status), "primary");
        status.recovering = true;
        assert_eq!(role(&status), "recovering", "whatever its view says");
        status.retired = true;
        assert_eq!(role(&status), "retired");
    }

    #[test]
    fn a_validator_of_another_version_is_named_not_silent() {
        let mut other = row(0, false);
        other.answer = None;
        other.unreadable = true;
        let rows = vec![row(100, false), row(100, false), other];
        let problems = judge(&rows, (4, 3), Duration::from_secs(30));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].starts_with("1 answered in a form this pbft cannot read"));
    }

    #[test]
    fn a_validator_that_never_committed_shows_no_commit_age() {
        let mut fresh = row(12_000, false);
        if let Some(answer) = &mut fresh.answer {
            answer.executed = 0;
        }
        let status = ClusterStatus {
            epoch: 0,
            epoch_changes: 0,
            validators: 4,
            quorum: 3,
            answering: 2,
            highest_executed: 9,
            rows: vec![fresh, row(1_500, false)],
            healthy: true,
            problems: Vec::new(),
        };
        let table = status.table();
        assert!(table.contains("never"), "{table}");
        assert!(table.contains("1.5 s ago"), "{table}");
        assert!(!table.contains("12.0 s ago"), "{table}");
    }

    #[test]
    fn an_idle_cluster_is_healthy_and_a_stuck_one_is_not() {
        let limit = Duration::from_secs(30);
        // Idle for an hour: nothing to commit, nothing wrong.
        let idle = vec![row(3_600_000, false); 4];
        assert!(judge(&idle, (4, 3), limit).is_empty());
        // Work waits on one validator, and the freshest commit anywhere is recent.
        let mut busy = idle.clone();
        busy[0] = row(3_600_000, true);
        busy[1] = row(200, false);
        assert!(judge(&busy, (4, 3), limit).is_empty());
        // Work waits, and nobody committed for a minute: stuck.
        let stuck = vec![row(60_000, true), row(61_000, false), row(60_500, false)];
        let problems = judge(&stuck, (4, 3), limit);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("60.0 s"), "{problems:?}");
        // Two of four answer: no quorum, whatever they say.
        let mut short = vec![row(10, false); 2];
        short.push(Row {
            answer: None,
            ..row(0, false)
        });
        let problems = judge(&short, (4, 3), limit);
        assert_eq!(
            problems,
            ["only 2 of the set's 4 validators answer; committing needs 3"]
        );
    }
}
