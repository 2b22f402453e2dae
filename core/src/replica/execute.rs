//! Execution: committed batches go to the host strictly in sequence order, one at a time,
//! and come back as results the replica signs as replies (one signature per batch, over the
//! Merkle root of its replies) and, at checkpoints, as the state it signs.

use alloc::vec::Vec;

use super::Replica;
use super::exactly_once::Freshness;
use super::output::{Delivery, Destination, Output, Record};
use crate::crypto::Digest;
use crate::error::Error;
use crate::governance::RECONFIGURATION_TAG;
use crate::merkle;
use crate::message::Message;
use crate::state::{SnapshotJob, TakenSnapshot};
use crate::statement::{Reply, Request, reply_leaf, reply_root_digest};

impl Replica {
    /// Hands committed batches to the host, strictly in sequence order.
    pub(super) fn deliver_ready(&mut self) {
        let before = self.last_delivered;
        let mut of_this_view = false;
        // One delivery at a time: the next only once the host executed the last, so the
        // exactly-once table a checkpoint snapshots is exactly as of the checkpoint's seq.
        // Nothing executes on a state that diverged from the stable checkpoint: the install
        // of the stable state comes first (see `check_diverged`).
        let repairing = self.repairing();
        // Nothing past a scheduled boundary: the next epoch orders it (nothing honest got there).
        while self.last_delivered == self.executed
            && !repairing
            && !self.epochs.retired
            && self.last_delivered < self.epoch_end()
            && let Some(slot) = self.log.get_mut(&(self.last_delivered + 1))
        {
            let Some(certificate) = slot.certificate.clone() else {
                break;
            };
            let Some(batch) = slot.batch.clone() else {
                break;
            };
            let seq = self.last_delivered + 1;
            of_this_view |=
                certificate.view == self.view && certificate.epoch == self.validators.epoch();
            for leaf in &slot.leaves {
                self.intake.unwatch(leaf);
            }
            slot.executing.clear();
            let mut execute = Vec::new();
            let mut forgotten = Vec::new();
            // Reconfigurations: (index in the batch, position in `executing`, the request).
            let mut tagged = Vec::new();
            for (index, request) in batch.requests.iter().enumerate() {
                if self.clients.freshness(&request.client, request.client_seq) == Freshness::Fresh {
                    let digest = slot
                        .leaves
                        .get(index)
                        .copied()
                        .unwrap_or_else(|| request.digest(&self.config.chain_id));
                    let executed = (request.client, request.client_seq, digest);
                    forgotten.extend(self.clients.record_execution(executed, seq));
                    match request.op.starts_with(RECONFIGURATION_TAG) {
                        true => tagged.push((index, slot.executing.len(), request)),
                        false => execute.push(index as u32),
                    }
                    slot.executing.push(executed);
                } else {
                    self.metrics.requests_skipped += 1;
                }
            }
            // A client forgotten and then recorded again within the batch keeps its row.
            forgotten.retain(|client| !self.clients.contains(client));
            forgotten.sort_unstable();
            forgotten.dedup();
            let checkpoint = seq.is_multiple_of(self.config.checkpoint_interval);
            self.metrics.batches_committed += 1;
            self.metrics.requests_committed += batch.requests.len() as u64;
            self.metrics.requests_executed += execute.len() as u64;
            self.metrics.evidence_committed += batch.evidence.len() as u64;
            self.evidence.commit(&batch.evidence);
            self.last_delivered = seq;
            // The batch is in the log already if this replica's accepted or prepared record
            // carried it and no compaction dropped that record (it keeps them above the
            // stable checkpoint).
            let logged = slot.batch_logged
                && seq > self.checkpoints.stable().seq
                && slot
                    .proposal
                    .as_ref()
                    .is_some_and(|p| p.digest == certificate.digest);
            let redo = (!logged).then(|| batch.clone());
            let requests: Vec<&Request> = tagged.iter().map(|&(_, _, request)| request).collect();
            let results = self.decide_next_set(seq, &requests, &batch.evidence);
            let decided: Vec<(u32, Vec<u8>)> = tagged
                .iter()
                .zip(&results)
                .map(|(&(index, _, _), result)| (index as u32, result.clone()))
                .collect();
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.decided = tagged.iter().map(|&(_, at, _)| at).zip(results).collect();
            }
            self.outbox
                .persist(Record::Committed(certificate.clone(), redo));
            self.outbox.push(Output::Deliver(Delivery {
                seq,
                batch,
                certificate,
                execute,
                decided,
                checkpoint,
                forgotten,
                client_floor: self.clients.floor(),
            }));
        }
        if self.last_delivered > before {
            self.made_progress(of_this_view);
        }
    }

    /// The host executed the delivery at `seq` and reports one result per executed request,
    /// and, when the delivery was a checkpoint, the application's snapshot after it (its
    /// canonical bytes: equal on every honest replica).
    ///
    /// Calls come in delivery order. The replica signs the replies and, at a checkpoint,
    /// digests the state and signs the digest: work that grows with the state, on the
    /// caller's thread. [`Replica::executed_deferring`] takes that work off it.
    ///
    /// # Errors
    ///
    /// [`Error::HostContract`] when the call breaks the order or shape above; nothing changes.
    pub fn executed(
        &mut self,
        now: u64,
        seq: u64,
        results: Vec<Vec<u8>>,
        snapshot: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        self.enter(now);
        let take = match snapshot {
            Some(app) => Take::Now(app),
            None => Take::No,
        };
        let result = self.on_executed(seq, results, take).map(|_| ());
        self.count(result)
    }

    /// As [`Replica::executed`] for a checkpoint's delivery, with the state's snapshot to
    /// come later: the replica signs the replies now and hands back the checkpoint's
    /// [`SnapshotJob`]; the host adds the application's bytes as of `seq` and digests them
    /// ([`SnapshotJob::finish`], on any thread) while later deliveries execute, then hands
    /// the result to [`Replica::snapshot_taken`]. The checkpoint is signed then. `None`:
    /// no checkpoint is taken there (the state is being replaced by a fetched one).
    ///
    /// The host must not make its store durable past `seq` before the checkpoint vote
    /// [`Replica::snapshot_taken`] signs is durable in its log: a replica restored past a
    /// checkpoint it never signed cannot sign it any more (its state there is gone), and if
    /// too few signed it (the whole cluster crashed meanwhile) the window never moves again.
    /// Within that rule, a job whose result never comes back (the host crashed) costs
    /// nothing: the restored replica executes `seq` again from its log and signs then.
    ///
    /// # Errors
    ///
    /// [`Error::HostContract`] when the call breaks the order or shape of
    /// [`Replica::executed`], or `seq` is not a checkpoint seq; nothing changes.
    pub fn executed_deferring(
        &mut self,
        now: u64,
        seq: u64,
        results: Vec<Vec<u8>>,
    ) -> Result<Option<SnapshotJob>, Error> {
        self.enter(now);
        match self.on_executed(seq, results, Take::Later) {
            Ok(job) => Ok(job),
            Err(err) => self.count(Err(err)).map(|()| None),
        }
    }

    /// The state of a checkpoint whose snapshot [`Replica::executed_deferring`] deferred,
    /// digested: the replica keeps it to serve peers and signs its checkpoint vote (true:
    /// the host keeps it durably too, see [`ExecutedState::checkpoints`]). One that no
    /// longer matters is dropped (false): the replica installed a fetched state since,
    /// found its own state diverged there, or moved past it (it is then only compared with
    /// the quorum's).
    ///
    /// # Errors
    ///
    /// [`Error::HostContract`] for a seq off the checkpoint interval, or an application
    /// snapshot above `max_snapshot_bytes`; nothing changes.
    ///
    /// [`ExecutedState::checkpoints`]: crate::ExecutedState::checkpoints
    pub fn snapshot_taken(&mut self, now: u64, snapshot: TakenSnapshot) -> Result<bool, Error> {
        self.enter(now);
        match self.on_snapshot_taken(snapshot) {
            Ok(kept) => Ok(kept),
            Err(err) => self.count(Err(err)).map(|()| false),
        }
    }

    /// The job of the checkpoint at `seq` (deferral `id`): the exactly-once table as of now
    /// (just after executing `seq`).
    fn job(&self, seq: u64, id: u64) -> SnapshotJob {
        SnapshotJob {
            seq,
            id,
            clients: self.clients.export(),
            epoch: self.epoch_state(seq),
            chunk_bytes: self.config.snapshot_chunk_bytes,
        }
    }

    fn on_snapshot_taken(&mut self, snapshot: TakenSnapshot) -> Result<bool, Error> {
        let seq = snapshot.seq();
        if !seq.is_multiple_of(self.config.checkpoint_interval) {
            return Err(Error::HostContract("snapshot_taken() off a checkpoint seq"));
        }
        // Not awaited: cancelled by an install or a divergence since, or a job of an earlier
        // deferral at this seq (before a repair re-executed it). Its state no longer counts,
        // whatever its size; an install may even have moved `executed` below it.
        if !self.checkpoints.awaits_job(seq, snapshot.job) {
            return Ok(false);
        }
        if snapshot.app().len() as u64 > self.config.max_snapshot_bytes {
            return Err(Error::HostContract(
                "the application snapshot exceeds max_snapshot_bytes",
            ));
        }
        match self.checkpoints.undefer(seq) {
            // Stable, and passed, before the snapshot came back: its state is compared here,
            // where nothing else would compare it (at the stable seq, `checkpoint` does).
            Some(stable) if seq < self.checkpoints.stable().seq => {
                let own = snapshot.snapshot.manifest.digest(&self.config.chain_id);
                self.compare_state(seq, own, stable);
                self.update_low();
                Ok(false)
            }
            _ => {
                self.take_snapshot(snapshot);
                self.update_low();
                // Unless the window's move just pruned it (or a divergence found there).
                Ok(self.checkpoints.snapshot(seq).is_some())
            }
        }
    }

    /// Keeps the state at a checkpoint to serve it and signs its digest.
    fn take_snapshot(&mut self, snapshot: TakenSnapshot) {
        let seq = snapshot.seq();
        let state = snapshot.snapshot.manifest.digest(&self.config.chain_id);
        self.checkpoints.keep_snapshot(seq, snapshot.snapshot);
        self.checkpoint(seq, state);
    }

    /// Reports the execution of `seq`; at a checkpoint, takes its snapshot as `take` says
    /// and returns the job when it is deferred.
    fn on_executed(
        &mut self,
        seq: u64,
        results: Vec<Vec<u8>>,
        take: Take,
    ) -> Result<Option<SnapshotJob>, Error> {
        if seq != self.executed + 1 || seq > self.last_delivered {
            return Err(Error::HostContract("executed() must follow delivery order"));
        }
        let checkpoint = seq.is_multiple_of(self.config.checkpoint_interval);
        if checkpoint == matches!(take, Take::No) {
            return Err(Error::HostContract(
                "executed() takes a snapshot exactly at checkpoint seqs",
            ));
        }
        if let Take::Now(app) = &take
            && app.len() as u64 > self.config.max_snapshot_bytes
        {
            return Err(Error::HostContract(
                "the application snapshot exceeds max_snapshot_bytes",
            ));
        }
        let repairing = self.repairing();
        let Some(slot) = self.log.get_mut(&seq) else {
            return Err(Error::HostContract("executed() for a seq never delivered"));
        };
        let Some(certificate) = slot.certificate.as_ref() else {
            return Err(Error::HostContract("executed() for a seq never delivered"));
        };
        if results.len() + slot.decided.len() != slot.executing.len() {
            return Err(Error::HostContract(
                "executed() needs one result per executed request",
            ));
        }
        let results = merge_decided(results, core::mem::take(&mut slot.decided));
        if repairing {
            // Executed on a state the stable checkpoint proved wrong, which the coming install
            // replaces: no reply is signed from it, and no checkpoint.
            slot.executing.clear();
            for leaf in core::mem::take(&mut slot.leaves) {
                self.intake.release(&leaf);
            }
            self.executed = seq;
            return Ok(None);
        }
        let view = certificate.view;
        let executing = core::mem::take(&mut slot.executing);
        let request_leaves = core::mem::take(&mut slot.leaves);
        let chain = self.config.chain_id;
        let leaves: Vec<Digest> = executing
            .iter()
            .zip(&results)
            .map(|((client, client_seq, request), result)| {
                reply_leaf(&chain, (client, *client_seq, request), result)
            })
            .collect();
        let tree = merkle::Tree::new(&leaves);
        let signed = reply_root_digest(&chain, self.validators.epoch(), view, seq, &tree.root());
        // A null batch, or one whose requests all ran before, has no one to answer.
        let signature = match executing.is_empty() {
            true => crate::crypto::Signature([0; 64]),
            false => self.signer.sign(&mut self.metrics, &signed),
        };
        for (index, (&(client, client_seq, request), result)) in
            executing.iter().zip(results).enumerate()
        {
            let Some(proof) = tree.prove(index) else {
                continue;
            };
            let reply = Reply {
                view,
                seq,
                client,
                client_seq,
                request,
                result,
                proof,
                replica: self.id,
                signature,
            };
            self.tell_epoch(client, false);
            // Encoded, then kept: the reply moves into the message and back, uncopied.
            let message = Message::Reply(reply);
            self.send(Destination::Client(client), message.encode());
            if let Message::Reply(reply) = message {
                self.clients.store_reply(reply);
            }
        }
        for leaf in &request_leaves {
            self.intake.release(leaf);
        }
        self.executed = seq;
        let deferred = match take {
            Take::No => None,
            Take::Now(app) => {
                self.take_snapshot(self.job(seq, u64::MAX).finish(app));
                None
            }
            Take::Later => {
                let id = self.checkpoints.defer(seq);
                Some(self.job(seq, id))
            }
        };
        self.update_low();
        if self.is_primary() && self.has_proposable() {
            self.propose(false);
        }
        self.deliver_ready();
        Ok(deferred)
    }

    /// Answers a retransmission of a client's last executed request for which no reply is
    /// cached (this replica installed the state that executed it): signs a reply of its own
    /// from the replicated result, once, and caches it.
    pub(super) fn reply_again(&mut self, request: &Request) -> Result<(), Error> {
        let Some((seq, executed, result)) = self.clients.last_result(&request.client) else {
            return Err(Error::Duplicate);
        };
        let chain = self.config.chain_id;
        let leaf = reply_leaf(
            &chain,
            (&request.client, request.client_seq, &executed),
            &result,
        );
        let (Some(proof), root) = (merkle::prove(&[leaf], 0), merkle::root(&[leaf])) else {
            return Err(Error::Duplicate);
        };
        let signed = reply_root_digest(&chain, self.validators.epoch(), self.view, seq, &root);
        let signature = self.signer.sign(&mut self.metrics, &signed);
        let reply = Reply {
            view: self.view,
            seq,
            client: request.client,
            client_seq: request.client_seq,
            request: executed,
            result,
            proof,
            replica: self.id,
            signature,
        };
        self.tell_epoch(request.client, true);
        let bytes = Message::Reply(reply.clone()).encode();
        self.send(Destination::Client(request.client), bytes);
        self.clients.store_reply(reply);
        Ok(())
    }
}

/// The results of every executed request in order: the host's, with the ones the replica
/// decided itself put in at their positions.
fn merge_decided(host: Vec<Vec<u8>>, decided: Vec<(usize, Vec<u8>)>) -> Vec<Vec<u8>> {
    if decided.is_empty() {
        return host;
    }
    let mut merged = Vec::with_capacity(host.len() + decided.len());
    let mut host = host.into_iter();
    for (at, result) in decided {
        while merged.len() < at {
            match host.next() {
                Some(next) => merged.push(next),
                None => break,
            }
        }
        merged.push(result);
    }
    merged.extend(host);
    merged
}

/// What a report of execution does about the checkpoint's snapshot.
enum Take {
    /// Not a checkpoint.
    No,
    /// Digest these application bytes now.
    Now(Vec<u8>),
    /// The host digests it and hands it over later ([`Replica::snapshot_taken`]).
    Later,
}
