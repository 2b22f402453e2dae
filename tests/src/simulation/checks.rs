//! The invariants, checked as the run goes: agreement (no two honest replicas deliver different
//! batches at one seq), validity (only requests clients signed), exactly-once and in-order
//! execution, equal results and states, QC and inclusion-proof validity, evidence only against
//! the faulty, no honest validator signing two digests for one statement (across restarts);
//! and at the end, liveness. A violation is recorded with the virtual time it was seen.

use pbft_core::{
    Batch, Digest, Evidence, Hasher, Message, QuorumCertificate, Request, Vote, verify_evidence,
    verify_inclusion, verify_qc,
};

use super::{NodeId, Simulation};
use crate::chain;

/// A committed batch as the first honest replica delivered it.
pub(super) struct Committed {
    pub(super) digest: Digest,
    pub(super) batch: Batch,
    pub(super) certificate: QuorumCertificate,
}

impl Simulation {
    /// The set of `epoch` as the run learned it (the genesis set for one never entered, which
    /// then fails the check it is used for).
    pub(super) fn set_of(&self, epoch: u64) -> pbft_core::ValidatorSet {
        self.sets
            .get(&epoch)
            .cloned()
            .unwrap_or_else(|| self.set.clone())
    }

    /// Records a violation with the virtual time it was seen.
    pub(super) fn violation(&mut self, what: String) {
        let line = format!("t={}ms: {what}", self.now);
        self.report.violations.push(line);
    }

    /// A batch an honest replica delivers: the next seq, certified by a valid QC for it, made
    /// of requests clients signed, and the same batch every honest replica delivered there
    /// (agreement). The first delivery of a seq is what the others are held to.
    pub(super) fn check_delivery(
        &mut self,
        index: NodeId,
        seq: u64,
        batch: &Batch,
        qc: &QuorumCertificate,
    ) {
        let digest = batch.digest(&chain());
        self.check_committed_evidence(index, seq, batch);
        if self.validators[index].delivered + 1 != seq {
            self.violation(format!("replica {index} delivered seq {seq} out of order"));
        }
        if qc.digest != digest || qc.seq != seq {
            self.violation(format!(
                "replica {index}: QC at seq {seq} does not match its batch"
            ));
        }
        match self.sets.get(&qc.epoch) {
            Some(set) => {
                if let Err(err) = verify_qc(&chain(), set, qc) {
                    self.violation(format!(
                        "replica {index}: QC at seq {seq} does not verify: {err}"
                    ));
                }
            }
            None => self.violation(format!(
                "replica {index}: QC at seq {seq} of epoch {}, which no replica entered",
                qc.epoch
            )),
        }
        for request in &batch.requests {
            let digest = request.digest(&chain());
            if !self.submitted.contains(&digest) && !self.attested.contains(&digest) {
                self.violation(format!(
                    "replica {index} delivered a request no client signed and no listed gateway attested"
                ));
            }
        }
        match self.committed.get(&seq) {
            Some(first) if first.digest != digest => {
                self.violation(format!(
                    "agreement: two honest replicas delivered different batches at seq {seq}"
                ));
            }
            Some(_) => {}
            None => {
                self.report.attested_forgeries += batch
                    .requests
                    .iter()
                    .filter(|request| !self.submitted.contains(&request.digest(&chain())))
                    .count() as u64;
                self.committed.insert(
                    seq,
                    Committed {
                        digest,
                        batch: batch.clone(),
                        certificate: qc.clone(),
                    },
                );
                self.report.batches = self.report.batches.max(seq);
            }
        }
    }

    /// Exactly-once and in-order execution on one honest replica, and the same result for a
    /// request on every honest replica.
    pub(super) fn check_executed(
        &mut self,
        index: NodeId,
        seq: u64,
        request: &Request,
        result: &[u8],
    ) {
        let node = &mut self.validators[index];
        let key = (request.client, request.client_seq);
        if !node.executed.insert(key) {
            self.violation(format!(
                "replica {index} executed client request {} twice",
                request.client_seq
            ));
        }
        let node = &mut self.validators[index];
        let last = node
            .last_client_seq
            .insert(request.client, request.client_seq);
        if last.is_some_and(|last| last >= request.client_seq) {
            self.violation(format!(
                "replica {index} executed a client's requests out of order"
            ));
        }
        let digest = Hasher::new(b"sim/result").bytes(result).finish();
        let expected = *self.results.entry(key).or_insert(digest);
        if expected != digest {
            self.violation(format!("replicas computed different results at seq {seq}"));
        }
        let request = request.digest(&chain());
        if *self.executed_requests.entry(key).or_insert(request) != request {
            self.violation(format!(
                "replicas executed different requests under one client number at seq {seq}"
            ));
        }
    }

    /// Every honest replica reaches the same application state after `seq`.
    pub(super) fn check_state(&mut self, index: NodeId, seq: u64) {
        let state = self.validators[index].state;
        let first = *self.states.entry(seq).or_insert(state);
        if first != state {
            self.violation(format!(
                "replica {index} reached another state at seq {seq}"
            ));
        }
    }

    /// A state installed from a snapshot is the one an honest replica computed at its seq.
    pub(super) fn check_installed(&mut self, index: NodeId, seq: u64) {
        let state = self.validators[index].state;
        match self.states.get(&seq) {
            Some(expected) if *expected != state => self.violation(format!(
                "replica {index} installed a state at seq {seq} no honest replica had"
            )),
            Some(_) => {}
            None => self.violation(format!(
                "replica {index} installed a state at seq {seq} before any honest replica executed it"
            )),
        }
    }

    /// The no-double-signing invariant, across restarts: an honest validator never signs
    /// two digests for one (phase, view, seq).
    /// Twins are not held to it: a replica that meets statements its twin signed with the
    /// shared key relays them as its own, which no honest validator's key ever does.
    pub(super) fn check_signed(&mut self, index: NodeId, vote: &Vote) {
        let node = &self.validators[index];
        let own = node
            .replica
            .validators()
            .key(vote.replica)
            .map(|k| k.public_key());
        if node.fault.is_some() || own != Some(self.keys[node.id]) {
            return;
        }
        let key = (index, vote.phase, vote.view, vote.seq);
        let first = *self.signed.entry(key).or_insert(vote.digest);
        if first != vote.digest {
            let epoch = node.replica.validators().epoch();
            let recovering = node.replica.is_recovering();
            if std::env::var_os("PBFT_SIM_TRACE_ERRORS").is_some() {
                eprintln!("DOUBLE {:?}", node.replica);
            }
            self.violation(format!(
                "replica {index} signed two digests for {:?} at view {} seq {} (epoch {epoch}, recovering {recovering})",
                vote.phase, vote.view, vote.seq
            ));
        }
    }

    /// The same invariant on what actually went on the wire.
    pub(super) fn check_sent(&mut self, index: NodeId, bytes: &[u8]) {
        let votes = match Message::decode(bytes, usize::MAX) {
            Ok(Message::Vote(vote)) => vec![vote],
            Ok(Message::PrePrepare(pre_prepare)) => vec![pre_prepare.vote],
            Ok(Message::NewView(new_view)) => new_view.proposals,
            _ => Vec::new(),
        };
        for vote in &votes {
            self.check_signed(index, vote);
            self.sent.insert((index, vote.phase, vote.view, vote.seq));
        }
    }

    /// Validator `index` was restored from an old copy: the statements it signed and never
    /// sent are gone with its log, and nobody holds them; the ones it sent still bind it.
    pub(super) fn forget_unsent(&mut self, index: NodeId) {
        let sent = &self.sent;
        self.signed
            .retain(|key, _| key.0 != index || sent.contains(key));
    }

    /// Evidence a replica reported must verify, and be against a faulty validator.
    pub(super) fn check_evidence(&mut self, index: NodeId, evidence: &Evidence) {
        let set = self.set_of(evidence.epoch);
        let Some(culprit) = self.genesis_index(&set, evidence.offender()) else {
            self.violation(format!(
                "replica {index} reported evidence against no validator"
            ));
            return;
        };
        match verify_evidence(&chain(), &set, evidence) {
            Ok(()) if self.validators[culprit].fault.is_some() => {
                self.report.evidence += 1;
                let offender = culprit as u16;
                self.conflict_at.entry(offender).or_insert(self.now);
                if self.validators[index].fault.is_none() {
                    if std::env::var_os("PBFT_SIM_TRACE_ERRORS").is_some() {
                        eprintln!(
                            "t={} replica {index} reports evidence against {offender}",
                            self.now
                        );
                    }
                    self.reported.insert(offender);
                }
            }
            Ok(()) => self.violation(format!("evidence against honest validator {culprit}")),
            Err(err) => {
                let (a, b) = (&evidence.first, &evidence.second);
                self.violation(format!(
                    "replica {index} reported invalid evidence: {err} ({:?} view {} seq {} by {} and {:?} view {} seq {} by {})",
                    a.phase, a.view, a.seq, a.replica, b.phase, b.view, b.seq, b.replica
                ))
            }
        }
    }

    /// Evidence an honest replica delivered in a committed batch verifies, is against a faulty
    /// validator, and convicts it from now on.
    fn check_committed_evidence(&mut self, index: NodeId, seq: u64, batch: &Batch) {
        for evidence in &batch.evidence {
            let set = self.set_of(evidence.epoch);
            let offender = self
                .genesis_index(&set, evidence.offender())
                .unwrap_or(usize::MAX);
            let faulty = self
                .validators
                .get(offender)
                .is_some_and(|node| node.fault.is_some());
            let offender = offender as u16;
            match verify_evidence(&chain(), &set, evidence) {
                Ok(()) if faulty => {
                    self.convicted_in.entry(offender).or_insert(evidence.epoch);
                    if self.convicted_at.insert(offender, self.now).is_none() {
                        self.report.convictions += 1;
                        let since = self.conflict_at.get(&offender).copied();
                        self.report
                            .conviction_ms
                            .push(self.now.saturating_sub(since.unwrap_or(self.now)));
                    }
                }
                Ok(()) => self.violation(format!(
                    "replica {index} committed evidence against honest validator {offender} at seq {seq}"
                )),
                Err(err) => self.violation(format!(
                    "replica {index} committed invalid evidence at seq {seq}: {err}"
                )),
            }
        }
    }

    /// Every equivocation an honest replica reported was committed by the end of the run.
    pub(super) fn check_convictions(&mut self) {
        self.report.undetected = self
            .conflict_at
            .keys()
            .filter(|offender| !self.reported.contains(offender))
            .count() as u64;
        let unconvicted: Vec<u16> = self
            .reported
            .iter()
            .filter(|offender| !self.convicted_at.contains_key(offender))
            .copied()
            .collect();
        for offender in unconvicted {
            let at = self.conflict_at.get(&offender).copied().unwrap_or(0);
            self.violation(format!(
                "evidence against validator {offender} (first conflict at {at} ms) never committed"
            ));
        }
    }

    /// A result a client accepted is the one the honest replicas computed for its request.
    pub(super) fn check_accepted(&mut self, client: usize, request: &Request, result: &[u8]) {
        let digest = Hasher::new(b"sim/result").bytes(result).finish();
        let key = (request.client, request.client_seq);
        if self.executed_requests.get(&key) != Some(&request.digest(&chain())) {
            self.violation(format!(
                "client {client} accepted the result of another request under its number {}",
                request.client_seq
            ));
        }
        match self.results.get(&key) {
            Some(expected) if *expected == digest => {}
            _ => self.violation(format!(
                "client {client} accepted a result no honest replica computed for request {}",
                request.client_seq
            )),
        }
    }

    /// A light client's check: the request is in the batch the QC at `seq` certifies.
    pub(super) fn check_inclusion(&mut self, request: &Request, seq: u64) {
        let Some(committed) = self.committed.get(&seq) else {
            self.violation(format!(
                "client accepted a result at seq {seq}, which never committed"
            ));
            return;
        };
        // By digest, as the QC certifies and a light client checks: a client's signature is
        // not part of what is agreed (a peer may serve the batch with another one).
        let digest = request.digest(&chain());
        let position = committed
            .batch
            .requests
            .iter()
            .position(|r| r.digest(&chain()) == digest);
        let proof = position.and_then(|index| committed.batch.prove(&chain(), index));
        let set = self.set_of(committed.certificate.epoch);
        let ok = proof.is_some_and(|proof| {
            verify_qc(&chain(), &set, &committed.certificate).is_ok()
                && verify_inclusion(&committed.certificate, request, &proof).is_ok()
        });
        if !ok {
            self.violation(format!(
                "no QC + inclusion proof for a request at seq {seq}"
            ));
        }
    }

    /// Once the network healed and the crashed are back: every request completed, and every
    /// honest replica delivered up to the highest seq any delivered.
    pub(super) fn check_liveness(&mut self) {
        let expected = (self.scenario.clients * self.scenario.requests_per_client) as u64;
        if self.report.requests_completed != expected {
            self.violation(format!(
                "liveness: {} of {expected} requests completed",
                self.report.requests_completed
            ));
        }
        let highest = self.report.batches;
        for index in 0..self.validators.len() {
            let node = &self.validators[index];
            if node.held_to_liveness() && node.delivered != highest {
                let delivered = node.delivered;
                self.violation(format!(
                    "replica {index} delivered up to {delivered} of {highest}"
                ));
            }
            if self.validators[index].diverged {
                self.violation(format!(
                    "replica {index} ends the run on a state that diverged from the quorum's"
                ));
            }
        }
    }
}
