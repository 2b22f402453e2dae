//! The host of a simulated validator: its replica, its application (a hash chain over the
//! operations), the exactly-once table and store it keeps durably, what it does with each
//! output of its replica, and how it crashes and comes back from its records.

use std::collections::{BTreeMap, BTreeSet};

use pbft_core::{
    ClientRecord, Config, Delivery, Digest, ExecutedState, Hasher, Keypair, Output, PublicKey,
    Record, Replica, ValidatorSet,
};

use super::{Event, NodeId, Simulation};
use crate::report::observe;
use crate::{Fault, chain};

/// A simulated validator: the replica and everything its host keeps beside it.
pub(super) struct Validator {
    /// The validator whose key it runs (a twin shares its id with the validator).
    pub(super) id: usize,
    pub(super) replica: Replica,
    pub(super) keypair: Keypair,
    pub(super) fault: Option<Fault>,
    /// Application state: a hash chain over executed operations.
    pub(super) state: Digest,
    /// Messages seen, for a replaying fault (bounded).
    pub(super) seen: Vec<Vec<u8>>,
    pub(super) timer: Option<u64>,
    /// (client, client_seq) executed, to check exactly-once.
    pub(super) executed: BTreeSet<(PublicKey, u64)>,
    pub(super) last_client_seq: BTreeMap<PublicKey, u64>,
    pub(super) delivered: u64,
    /// What the replica persisted (its write-ahead log), compacted at stable checkpoints.
    durable: Vec<Record>,
    /// Crashes at a random point of its next step.
    pub(super) crash_armed: bool,
    /// Crashed, waiting to restart.
    pub(super) down: bool,
    /// Crashes so far: a snapshot taken before one is lost with it.
    pub(super) life: u64,
    /// Checkpoint snapshots its host is taking: while any is, the store is not made durable
    /// (past a checkpoint whose vote is not logged, a restart could never sign it) and the
    /// log is not compacted, as `pbft_host::node::Node::flush` does.
    snapshots_pending: usize,
    /// A stable checkpoint was logged: compact once no snapshot is pending.
    compact_due: bool,
    /// When a drip-feeder sends its next state chunk, virtual ms.
    pub(super) drip_next: u64,
    /// The checkpoint a peer last asked a state spammer's state of.
    pub(super) fetched: u64,
    /// Every operation the application executed, in order: its snapshot.
    ops: Vec<(PublicKey, u64, Vec<u8>)>,
    /// The exactly-once table and executed batches, as a host keeps them beside its state.
    table: Table,
    /// The application store as of the last step completed: what survives a crash.
    store: Store,
    /// A copy of its records and store taken earlier, with its stable checkpoint then: the
    /// next restart is from it (an operator restoring an old backup).
    copy: Option<(Vec<Record>, Store, u64)>,
    /// Executed or installed since the store was last written.
    dirty: bool,
    /// Its application corrupted an operation (`Fault::DivergeAt`), once.
    corrupted: bool,
    /// Its state is the corrupted one: from the corruption to the install that replaces it.
    pub(super) diverged: bool,
    /// A spare outside the set: it takes no part until a reconfiguration adds it and it
    /// joins ([`Simulation::join`]); its replica until then is a stand-in that never runs.
    pub(super) standby: bool,
    /// Removed from the set while it was down: it stays down.
    pub(super) removed: bool,
}

/// The host's side of [`ExecutedState`]: kept from deliveries and installs.
#[derive(Clone, Default)]
struct Table {
    executed: u64,
    floor: u64,
    clients: BTreeMap<PublicKey, ClientRecord>,
    committed: BTreeMap<u64, pbft_core::Committed>,
    checkpoints: BTreeMap<u64, pbft_core::CheckpointState>,
}

/// What a validator's application store holds durably: the application (with what the
/// checker knows of it) and the table, as of the end of some step: always before the log is
/// compacted, otherwise at the end of a random 30 % of the steps that executed (a host that
/// commits its store lazily); a crash loses what came after, which the log replays.
#[derive(Clone, Default)]
struct Store {
    table: Table,
    state: Digest,
    ops: Vec<(PublicKey, u64, Vec<u8>)>,
    executed: BTreeSet<(PublicKey, u64)>,
    last_client_seq: BTreeMap<PublicKey, u64>,
}

impl Validator {
    /// A validator that has done nothing yet, running `replica` with `keypair`.
    pub(super) fn new(id: usize, replica: Replica, keypair: Keypair, fault: Option<Fault>) -> Self {
        Validator {
            id,
            replica,
            keypair,
            fault,
            state: Digest::default(),
            seen: Vec::new(),
            timer: None,
            executed: BTreeSet::new(),
            last_client_seq: BTreeMap::new(),
            delivered: 0,
            durable: Vec::new(),
            crash_armed: false,
            down: false,
            life: 0,
            snapshots_pending: 0,
            compact_due: false,
            drip_next: 0,
            fetched: 0,
            ops: Vec::new(),
            table: Table::default(),
            store: Store::default(),
            copy: None,
            dirty: false,
            corrupted: false,
            diverged: false,
            standby: false,
            removed: false,
        }
    }

    /// A spare validator `id` with `keypair`, outside the set and down until it joins.
    pub(super) fn standby(id: usize, config: &Config, keypair: Keypair) -> Self {
        let own = ValidatorSet::new(0, &[keypair.public_key()]).expect("a valid key");
        let same = Keypair::from_seed(&keypair.seed());
        let stand_in = Replica::new(config.clone(), own, same).expect("valid config");
        let mut spare = Validator::new(id, stand_in, keypair, None);
        spare.standby = true;
        spare.down = true;
        spare
    }

    /// Whether its executions are checked as an honest validator's: it has no fault, it is a
    /// twin, or its only fault is an application that diverged once and its state is the
    /// quorum's again.
    pub(super) fn checked(&self) -> bool {
        match self.fault {
            None => true,
            Some(Fault::DivergeAt(_)) => !self.diverged,
            // A twin runs honest code; only its key is shared.
            Some(Fault::Twin) => true,
            Some(_) => false,
        }
    }

    /// Whether it must have delivered everything by the end of a run: an honest validator,
    /// or one whose application diverged (it must have repaired its state).
    /// One outside the set (not joined yet, or removed) is not.
    pub(super) fn held_to_liveness(&self) -> bool {
        matches!(self.fault, None | Some(Fault::DivergeAt(_)))
            && !self.standby
            && !self.removed
            && !self.replica.is_retired()
    }

    /// The application: a hash chain over the operations, plus their log.
    fn apply(&mut self, client: PublicKey, client_seq: u64, op: &[u8]) {
        self.state = Hasher::new(b"sim/state")
            .digest(&self.state)
            .bytes(op)
            .finish();
        self.ops.push((client, client_seq, op.to_vec()));
    }
}

/// The application snapshot: each operation as key, number, length and bytes.
fn encode_app(ops: &[(PublicKey, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (client, client_seq, op) in ops {
        out.extend_from_slice(&client.0);
        out.extend_from_slice(&client_seq.to_le_bytes());
        out.extend_from_slice(&(op.len() as u32).to_le_bytes());
        out.extend_from_slice(op);
    }
    out
}

/// The operations of a snapshot [`encode_app`] made; `None` if it is not one.
fn decode_app(mut bytes: &[u8]) -> Option<Vec<(PublicKey, u64, Vec<u8>)>> {
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let key: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
        let client_seq = u64::from_le_bytes(bytes.get(32..40)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(40..44)?.try_into().ok()?) as usize;
        let op = bytes.get(44..44 + len)?.to_vec();
        ops.push((PublicKey(key), client_seq, op));
        bytes = &bytes[44 + len..];
    }
    Some(ops)
}

impl Simulation {
    /// Carries out validator `index`'s outputs in order, as its host does (checking each and
    /// adding it to the trace), then commits its store now and then and sets its timer. A
    /// validator armed to crash stops part way.
    pub(super) fn drain(&mut self, index: NodeId) {
        if self.validators[index].down {
            return;
        }
        // A validator armed to crash stops after a random number of this step's outputs:
        // possibly between a `Persist` and the `Send` it guards.
        let crash_after = match self.validators[index].crash_armed {
            true => Some(self.rng.range(0, 6)),
            false => None,
        };
        let mut processed = 0;
        let mut compact = false;
        while let Some(output) = self.validators[index].replica.poll_output() {
            if crash_after == Some(processed) {
                self.crash(index);
                return;
            }
            processed += 1;
            observe(&mut self.trace, index, &output);
            match output {
                Output::Persist(record) => {
                    // An accepted pre-prepare is the primary's vote: its own, if it is the primary.
                    if let Record::Signed(vote) | Record::Accepted(vote, _) = &record {
                        self.check_signed(index, vote);
                        if vote.phase == pbft_core::Phase::PrePrepare {
                            self.proposed_at
                                .entry((vote.view, vote.seq))
                                .or_insert(self.now);
                        }
                    }
                    compact |= matches!(record, Record::Stable(_));
                    self.validators[index].durable.push(record);
                }
                Output::Send { to, bytes } => {
                    self.check_sent(index, &bytes);
                    self.route(index, to, bytes)
                }
                Output::Deliver(delivery) => self.execute(index, delivery),
                Output::Install(install) => self.install(index, install),
                Output::Evidence(evidence) => self.check_evidence(index, &evidence),
                Output::StateDiverged { seq, .. } => self.note_divergence(index, seq),
                Output::EpochStarted(change) => self.epoch_started(index, &change),
                Output::Recovered(report) => {
                    if std::env::var_os("PBFT_SIM_TRACE_ERRORS").is_some() {
                        eprintln!(
                            "t={} replica {index} recovered: {report:?} {:?}",
                            self.now, self.validators[index].replica
                        );
                    }
                    self.report.rollbacks_detected += u64::from(report.lost > 0);
                }
                other => panic!("the simulator does not handle {other:?}"),
            }
        }
        if crash_after.is_some() {
            self.crash(index);
            return;
        }
        let node = &mut self.validators[index];
        node.compact_due |= compact;
        let settled = node.snapshots_pending == 0;
        let compact = node.compact_due && settled;
        if compact {
            self.validators[index].compact_due = false;
            // What a host does with its WAL after a stable checkpoint, and with the batches in
            // its store that no peer can still need.
            let node = &mut self.validators[index];
            node.durable = node.replica.durable_records();
            let keep_above = node
                .replica
                .stable_checkpoint()
                .seq
                .saturating_sub(self.config.retained_batches as u64);
            node.table.committed.retain(|&seq, _| seq > keep_above);
            let stable = node.replica.stable_checkpoint().seq;
            node.table.checkpoints.retain(|&seq, _| seq >= stable);
        }
        // The store commits durably before the log is compacted, and otherwise now and then:
        // it lags the log, whose redo records replay what it lacks after a crash.
        let lazy = self.rng.chance(70);
        let node = &mut self.validators[index];
        if settled && (compact || (node.dirty && !lazy)) {
            // The host's durable commit, after its records.
            node.store = Store {
                table: node.table.clone(),
                state: node.state,
                ops: node.ops.clone(),
                executed: node.executed.clone(),
                last_client_seq: node.last_client_seq.clone(),
            };
            node.dirty = false;
        }
        let timeout = self.validators[index].replica.poll_timeout();
        if timeout.is_some() && timeout != self.validators[index].timer {
            let at = timeout.unwrap_or_default().max(self.now);
            self.validators[index].timer = Some(at);
            self.schedule_at(at, Event::Timer { node: index, at });
        }
    }

    /// Counts an honest delivery's path, and its latency from the proposal in message delays
    /// (the scenario's mean one-way delay), for a batch proposed in the view it committed in.
    fn note_commit_latency(&mut self, seq: u64, certificate: &pbft_core::QuorumCertificate) {
        let report = &mut self.report;
        report.deliveries += 1;
        report.fast_deliveries += u64::from(certificate.path == pbft_core::CommitPath::Fast);
        let (low, high) = self.scenario.delay_ms;
        let mean_delay_ms = ((low + high) as f64 / 2.0).max(1.0);
        if let Some(at) = self.proposed_at.get(&(certificate.view, seq)) {
            let latency_ms = self.now.saturating_sub(*at) as f64;
            report.commit_delays.push(latency_ms / mean_delay_ms);
        }
    }

    /// Executes a delivery on a validator's application and checks the invariants.
    fn execute(&mut self, index: NodeId, delivery: Delivery) {
        let honest = self.validators[index].checked();
        let Delivery {
            seq,
            batch,
            certificate,
            execute,
            decided,
            checkpoint,
            forgotten,
            client_floor,
        } = delivery;
        if honest {
            self.check_delivery(index, seq, &batch, &certificate);
            self.note_commit_latency(seq, &certificate);
        }
        if self.validators[index].fault.is_none() {
            self.note_recovery(certificate.view);
        }
        let mut results = Vec::with_capacity(execute.len());
        // In batch order, the replica's own results (reconfigurations) among the application's.
        let mut order: Vec<(u32, Option<Vec<u8>>)> = execute.iter().map(|&p| (p, None)).collect();
        order.extend(decided.into_iter().map(|(p, result)| (p, Some(result))));
        order.sort_by_key(|(position, _)| *position);
        for (position, decided) in order {
            let Some(request) = batch.requests.get(position as usize) else {
                self.violation(format!(
                    "replica {index} asked to execute a request outside the batch"
                ));
                continue;
            };
            let node = &mut self.validators[index];
            if let Some(result) = decided {
                let row = ClientRecord {
                    client: request.client,
                    client_seq: request.client_seq,
                    request: request.digest(&chain()),
                    seq,
                    result: Some(result.clone()),
                };
                node.table.clients.insert(request.client, row);
                if honest && !self.validators[index].diverged {
                    self.check_executed(index, seq, request, &result);
                }
                continue;
            }
            match node.fault {
                Some(Fault::DivergeAt(at)) if self.now >= at && !node.corrupted => {
                    // The application gets this operation wrong: its state is no longer the
                    // one the others reach.
                    node.corrupted = true;
                    node.diverged = true;
                    let mut wrong = request.op.clone();
                    wrong.push(0xff);
                    node.apply(request.client, request.client_seq, &wrong);
                }
                _ => node.apply(request.client, request.client_seq, &request.op),
            }
            let result = node.state.0.to_vec();
            node.table.clients.insert(
                request.client,
                ClientRecord {
                    client: request.client,
                    client_seq: request.client_seq,
                    request: request.digest(&chain()),
                    seq,
                    result: Some(result.clone()),
                },
            );
            if honest && !self.validators[index].diverged {
                self.check_executed(index, seq, request, &result);
            }
            results.push(result);
        }
        let node = &mut self.validators[index];
        node.delivered = seq;
        for client in &forgotten {
            node.table.clients.remove(client);
        }
        node.table.floor = client_floor;
        node.table.executed = seq;
        node.table.committed.insert(
            seq,
            pbft_core::Committed {
                batch: batch.clone(),
                certificate: certificate.clone(),
            },
        );
        node.dirty = true;
        if honest && !self.validators[index].diverged {
            self.check_state(index, seq);
        }
        let delay = self.scenario.snapshot_delay_ms;
        if checkpoint && delay > 0 {
            // The host takes the snapshot (of the state now) away from the replica, which
            // goes on; it comes back a drawn time later, unless the validator crashes first.
            let node = &mut self.validators[index];
            match node.replica.executed_deferring(self.now, seq, results) {
                Ok(Some(job)) => {
                    node.snapshots_pending += 1;
                    let taken = job.finish(encode_app(&node.ops));
                    let life = node.life;
                    let wait = self.rng.range(0, delay);
                    let event = Event::Snapshot {
                        node: index,
                        life,
                        taken,
                    };
                    self.schedule(wait, event);
                }
                Ok(None) => {}
                Err(err) => {
                    self.violation(format!("replica {index} refused its own execution: {err}"))
                }
            }
            return;
        }
        let snapshot = checkpoint.then(|| encode_app(&self.validators[index].ops));
        if let Err(err) = self.validators[index]
            .replica
            .executed(self.now, seq, results, snapshot)
        {
            self.violation(format!("replica {index} refused its own execution: {err}"));
        }
        let node = &mut self.validators[index];
        if checkpoint && let Some(state) = node.replica.checkpoint_state(seq) {
            node.table.checkpoints.insert(seq, state);
        }
    }

    /// Hands a validator the checkpoint snapshot its host finished, and keeps the state it
    /// signs in the store, as a host does.
    pub(super) fn snapshot_taken(
        &mut self,
        index: NodeId,
        life: u64,
        taken: pbft_core::TakenSnapshot,
    ) {
        let node = &mut self.validators[index];
        if node.life != life || self.is_down(index) {
            return;
        }
        let node = &mut self.validators[index];
        node.snapshots_pending -= 1;
        let seq = taken.seq();
        match node.replica.snapshot_taken(self.now, taken) {
            Ok(true) => {
                if let Some(state) = node.replica.checkpoint_state(seq) {
                    node.table.checkpoints.insert(seq, state);
                    node.dirty = true;
                }
            }
            Ok(false) => {}
            Err(err) => {
                self.violation(format!("replica {index} refused its own snapshot: {err}"));
                return;
            }
        }
        self.drain(index);
    }

    /// Replaces a validator's application with a fetched snapshot, and checks it against
    /// what the first honest replica to reach that seq computed.
    fn install(&mut self, index: NodeId, install: pbft_core::Install) {
        let Some(ops) = decode_app(&install.snapshot) else {
            self.violation(format!("replica {index} installed an undecodable snapshot"));
            return;
        };
        let node = &mut self.validators[index];
        node.state = Digest::default();
        node.ops.clear();
        node.executed.clear();
        node.last_client_seq.clear();
        for (client, client_seq, op) in ops {
            node.apply(client, client_seq, &op);
            node.executed.insert((client, client_seq));
            node.last_client_seq.insert(client, client_seq);
        }
        node.delivered = install.seq;
        node.table.executed = install.seq;
        node.table.floor = install.client_floor;
        node.table.clients = install
            .clients
            .iter()
            .map(|record| (record.client, record.clone()))
            .collect();
        node.table.committed.retain(|&seq, _| seq <= install.seq);
        node.table.checkpoints.retain(|&seq, _| seq <= install.seq);
        if let Some(state) = node.replica.checkpoint_state(install.seq) {
            node.table.checkpoints.insert(install.seq, state);
        }
        node.dirty = true;
        node.diverged = false;
        self.report.state_transfers += 1;
        self.report.first_install_ms.get_or_insert(self.now);
        self.check_installed(index, install.seq);
    }

    /// A validator's core found its state at the stable checkpoint `seq` is not the quorum's:
    /// expected only of one whose application was made to diverge.
    fn note_divergence(&mut self, index: NodeId, seq: u64) {
        if std::env::var_os("PBFT_SIM_TRACE_ERRORS").is_some() {
            eprintln!(
                "DIVERGED replica {index} at {seq}: schedule {:?}, store executed {}",
                self.validators[index].replica.scheduled_epoch(),
                self.validators[index].store.table.executed
            );
        }
        match self.validators[index].fault {
            Some(Fault::DivergeAt(_)) if self.validators[index].corrupted => {
                self.report.state_repairs += 1;
            }
            _ => self.violation(format!(
                "replica {index} found its state at seq {seq} differs from the stable checkpoint"
            )),
        }
    }

    /// The validator stops: its unsent outputs are lost, its persisted records stay.
    pub(super) fn crash(&mut self, index: NodeId) {
        let node = &mut self.validators[index];
        while node.replica.poll_output().is_some() {}
        node.crash_armed = false;
        node.down = true;
        node.life += 1;
        node.snapshots_pending = 0;
        node.compact_due = false;
        node.timer = None;
    }

    /// Brings a crashed validator back from its persisted records and its application store.
    pub(super) fn restart(&mut self, index: NodeId) {
        let node = &mut self.validators[index];
        if !node.down {
            // It never took a step between the crash and now, so it never crashed.
            node.crash_armed = false;
            return;
        }
        let keypair = Keypair::from_seed(&node.keypair.seed());
        // Restored from an old copy: what it signed since is gone from its records.
        if let Some((records, store, stable)) = node.copy.take() {
            self.forget_unsent(index);
            let node = &mut self.validators[index];
            let now_stable = node.replica.stable_checkpoint().seq;
            node.durable = records;
            node.store = store;
            self.report.rollbacks += 1;
            self.report
                .rolled_back_seqs
                .push(now_stable.saturating_sub(stable));
        }
        let node = &mut self.validators[index];
        let table = &node.store.table;
        if std::env::var_os("PBFT_SIM_TRACE_ERRORS").is_some() {
            let scheduled: Vec<_> = node
                .durable
                .iter()
                .filter(|r| matches!(r, Record::Scheduled { .. } | Record::Committed(..)))
                .map(|r| match r {
                    Record::Scheduled { seq, .. } => format!("S{seq}"),
                    Record::Committed(qc, _) => format!("C{}", qc.seq),
                    _ => String::new(),
                })
                .collect();
            eprintln!(
                "RESTART replica {index} at {}: store executed {}, records {scheduled:?}",
                self.now, table.executed
            );
        }
        let executed = ExecutedState {
            executed: table.executed,
            client_floor: table.floor,
            clients: table.clients.values().cloned().collect(),
            committed: table.committed.values().cloned().collect(),
            checkpoints: table.checkpoints.values().cloned().collect(),
        };
        match Replica::restore(
            self.config.clone(),
            self.set.clone(),
            keypair,
            node.durable.iter().cloned(),
            executed,
        ) {
            Ok(replica) => node.replica = replica,
            // Removed from the set while it was down (or before it crashed): it stays down.
            // An honest one only by a reconfiguration (`check_reconfigured` checks the set).
            Err(pbft_core::ConfigError::Removed { .. })
                if !self.validators[index].held_to_liveness()
                    || !self.scenario.reconfigurations.is_empty() =>
            {
                self.validators[index].removed = true;
                return;
            }
            Err(err) => {
                let what = format!("replica {index} cannot restore: {err}");
                self.violation(what);
                return;
            }
        }
        let node = &mut self.validators[index];
        node.down = false;
        let store = node.store.clone();
        node.state = store.state;
        node.ops = store.ops;
        node.executed = store.executed;
        node.last_client_seq = store.last_client_seq;
        node.delivered = store.table.executed;
        node.table = store.table;
        node.dirty = false;
        node.timer = None;
        self.report.restarts += 1;
        // As a host does on start: rollback protection, a first tick (the replica learns the
        // time only from its inputs), then carry out what the restore left (deliveries the
        // log replays).
        if std::env::var_os("PBFT_SIM_NO_ROLLBACK_CHECK").is_none() {
            self.validators[index].replica.check_for_rollback(self.now);
        }
        self.validators[index].replica.handle_timeout(self.now);
        self.drain(index);
    }

    /// An operator copies a validator's data dir (its records and store as of its last
    /// completed step); its next restart is from the copy.
    pub(super) fn copy(&mut self, index: NodeId) {
        let node = &mut self.validators[index];
        if node.down {
            return;
        }
        let stable = node.replica.stable_checkpoint().seq;
        node.copy = Some((node.durable.clone(), node.store.clone(), stable));
    }
}
