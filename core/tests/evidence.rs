//! Equivocation evidence from detection to commit: forwarded once, checked by whoever takes
//! it, proposed by the primary, verified by backups, delivered with its batch, and holding
//! the primary to a deadline like a request does.

use pbft_core::testing::{
    NOW, batch, chain, drain, key_of, pre_prepare, replica as replica_with, request, small_config,
    validator_set, vote, vote_for,
};
use pbft_core::{
    Batch, CertificateError, CommitPath, Destination, Error, Evidence, MAX_BATCH_EVIDENCE, Message,
    Output, Phase, QuorumCertificate, Record, Replica, ReplicaId, Vote, verify_inclusion,
};

fn replica(index: usize) -> Replica {
    replica_with(index, small_config())
}

/// Validator `offender`'s two commits for one slot with different batches.
fn equivocation(offender: usize, seq: u64) -> Evidence {
    Evidence {
        epoch: 0,
        first: vote(offender, Phase::Commit, (0, seq), &batch(&[1])),
        second: vote(offender, Phase::Commit, (0, seq), &batch(&[2])),
    }
}

fn evidence_message(evidence: &Evidence) -> Vec<u8> {
    Message::Evidence(evidence.clone()).encode()
}

fn forwarded(outputs: &[Output]) -> Vec<Evidence> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send {
                to: Destination::AllValidators,
                bytes,
            } => match Message::decode(bytes, usize::MAX) {
                Ok(Message::Evidence(evidence)) => Some(evidence),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn reported(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|output| matches!(output, Output::Evidence(_)))
        .count()
}

#[test]
fn evidence_found_here_is_reported_and_forwarded_once_per_offender_and_phase() {
    let mut backup = replica(1);
    let from = key_of(2);
    let commit = |seq, client_seq| {
        Message::Vote(vote(2, Phase::Commit, (0, seq), &batch(&[client_seq]))).encode()
    };
    backup.handle_message(NOW, &from, &commit(1, 1)).unwrap();
    assert_eq!(
        backup.handle_message(NOW, &from, &commit(1, 2)),
        Err(Error::Equivocation(ReplicaId(2)))
    );
    let outputs = drain(&mut backup);
    assert_eq!(reported(&outputs), 1);
    let sent = forwarded(&outputs);
    assert_eq!(sent.len(), 1, "forwarded to every peer once: {outputs:?}");
    assert_eq!(
        pbft_core::verify_evidence(&chain(), &validator_set(4), &sent[0]),
        Ok(())
    );
    // The same offender equivocating in the same phase at another seq adds nothing to hold.
    backup.handle_message(NOW, &from, &commit(2, 1)).unwrap();
    let _ = backup.handle_message(NOW, &from, &commit(2, 2));
    let outputs = drain(&mut backup);
    assert_eq!((reported(&outputs), forwarded(&outputs).len()), (0, 0));
}

#[test]
fn a_peers_evidence_is_checked_kept_once_and_forwarded() {
    let mut backup = replica(1);
    let evidence = equivocation(2, 1);
    backup
        .handle_message(NOW, &key_of(3), &evidence_message(&evidence))
        .unwrap();
    let outputs = drain(&mut backup);
    assert_eq!(reported(&outputs), 1);
    assert_eq!(forwarded(&outputs), vec![evidence.clone()]);
    let checked = backup.metrics().signatures_verified;
    // A copy from another peer is dropped unchecked.
    assert_eq!(
        backup.handle_message(NOW, &key_of(0), &evidence_message(&evidence)),
        Err(Error::Duplicate)
    );
    assert_eq!(backup.metrics().signatures_verified, checked);

    // Against validator 3: a second vote signed by another key, two votes that agree, votes
    // of two views (no conflict: a new view may order another batch), another epoch.
    let mut forged = equivocation(3, 1);
    forged.second.signature = vote(0, Phase::Commit, (0, 1), &batch(&[2])).signature;
    let mut agreeing = equivocation(3, 1);
    agreeing.second = agreeing.first.clone();
    let mut two_views = equivocation(3, 1);
    two_views.second = vote(3, Phase::Commit, (1, 1), &batch(&[2]));
    let mut other_epoch = equivocation(3, 1);
    other_epoch.epoch = 1;
    for (evidence, expected) in [
        (forged, CertificateError::BadSignature),
        (agreeing, CertificateError::NotConflicting),
        (two_views, CertificateError::NotConflicting),
    ] {
        assert_eq!(
            backup.handle_message(NOW, &key_of(0), &evidence_message(&evidence)),
            Err(Error::Certificate(expected))
        );
    }
    // An epoch this replica has not reached has no set to check it with.
    assert_eq!(
        backup.handle_message(NOW, &key_of(0), &evidence_message(&other_epoch)),
        Err(Error::OtherEpoch { got: 1, current: 0 })
    );
    assert!(drain(&mut backup).is_empty(), "nothing kept or forwarded");
}

/// The commit certificate of `batch` at (0, seq), signed by validators 0, 1 and 2.
fn commits(seq: u64, batch: &Batch) -> Vec<(usize, Vec<u8>)> {
    (1..3)
        .map(|signer| {
            let commit = vote(signer, Phase::Commit, (0, seq), batch);
            (signer, Message::Vote(commit).encode())
        })
        .collect()
}

#[test]
fn the_primary_commits_evidence_in_a_batch_and_delivers_it_with_the_batch() {
    commits_evidence(true);
    commits_evidence(false);
}

/// The primary commits evidence sent to it; with `slash`, the conviction schedules the
/// offender's removal, and the evidence is never proposed again.
fn commits_evidence(slash: bool) {
    let mut config = small_config();
    config.slash_equivocators = slash;
    let mut primary = replica_with(0, config.clone());
    let evidence = equivocation(3, 1);
    primary
        .handle_message(NOW, &key_of(1), &evidence_message(&evidence))
        .unwrap();
    let outputs = drain(&mut primary);
    let proposed = outputs.iter().find_map(|output| match output {
        Output::Persist(Record::Accepted(vote, batch)) => Some((vote.clone(), batch.clone())),
        _ => None,
    });
    let Some((proposal, proposed)) = proposed else {
        panic!("an idle primary proposes the evidence at once: {outputs:?}");
    };
    assert!(proposed.requests.is_empty());
    assert_eq!(proposed.evidence, vec![evidence.clone()]);
    assert_eq!(proposal.digest, proposed.digest(&chain()));
    for signer in 1..3 {
        let prepare = vote(signer, Phase::Prepare, (0, 1), &proposed);
        let _ = primary.handle_message(NOW, &key_of(signer), &Message::Vote(prepare).encode());
    }
    for (signer, bytes) in commits(1, &proposed) {
        let _ = primary.handle_message(NOW, &key_of(signer), &bytes);
    }
    let delivered = drain(&mut primary)
        .into_iter()
        .find_map(|output| match output {
            Output::Deliver(delivery) => Some(delivery),
            _ => None,
        });
    let Some(delivery) = delivered else {
        panic!("the evidence batch commits");
    };
    assert_eq!(delivery.batch.evidence, vec![evidence.clone()]);
    assert!(delivery.execute.is_empty());
    assert_eq!(primary.metrics().evidence_committed, 1);
    primary
        .executed(NOW, delivery.seq, Vec::new(), None)
        .unwrap();
    drain(&mut primary);
    // Proposals of the evidence, once the batch delay runs out (the window is not idle).
    let proposals = |primary: &mut Replica| {
        let mut count = 0;
        let until = NOW + small_config().batch_delay_ms + 1;
        loop {
            count += drain(primary)
                .iter()
                .filter(|o| {
                    matches!(o, Output::Persist(Record::Accepted(_, batch)) if !batch.evidence.is_empty())
                })
                .count();
            match primary.poll_timeout().filter(|&at| at <= until) {
                Some(at) => primary.handle_timeout(at),
                None => return count,
            }
        }
    };
    if slash {
        // Validator 3 leaves the set at the first checkpoint a window after seq 1; evidence
        // against it can change nothing more, and is dropped unchecked.
        let next = primary
            .scheduled_epoch()
            .expect("the conviction schedules a change");
        assert_eq!(
            next.boundary,
            pbft_core::boundary_after(1, config.window, config.checkpoint_interval)
        );
        let set = validator_set(4);
        let remaining: Vec<_> = set.public_keys().filter(|k| *k != key_of(3)).collect();
        assert_eq!(next.validators, remaining);
        assert_eq!(
            primary.handle_message(NOW, &key_of(2), &evidence_message(&evidence)),
            Err(Error::Duplicate)
        );
        assert_eq!(proposals(&mut primary), 0);
        return;
    }
    assert!(primary.scheduled_epoch().is_none());
    // Committed. A peer that sends it again may have restarted and hold it pending: the
    // primary proposes it once more in this view, and no more.
    primary
        .handle_message(NOW, &key_of(2), &evidence_message(&evidence))
        .unwrap();
    assert_eq!(proposals(&mut primary), 1);
    assert_eq!(
        primary.handle_message(NOW, &key_of(1), &evidence_message(&evidence)),
        Err(Error::Duplicate)
    );
    assert_eq!(proposals(&mut primary), 0);
}

#[test]
fn a_backup_drops_committed_evidence_and_a_peer_pays_for_evidence_that_fails() {
    let mut backup = replica(1);
    let proposed = Batch {
        requests: Vec::new(),
        evidence: vec![equivocation(3, 1)],
    };
    backup
        .handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &proposed))
        .unwrap();
    for signer in [2, 3] {
        let prepare = vote(signer, Phase::Prepare, (0, 1), &proposed);
        let _ = backup.handle_message(NOW, &key_of(signer), &Message::Vote(prepare).encode());
    }
    for signer in [0, 2, 3] {
        let commit = vote(signer, Phase::Commit, (0, 1), &proposed);
        let _ = backup.handle_message(NOW, &key_of(signer), &Message::Vote(commit).encode());
    }
    let delivered = drain(&mut backup)
        .iter()
        .any(|o| matches!(o, Output::Deliver(d) if d.batch == proposed));
    assert!(delivered);
    assert_eq!(
        backup.handle_message(NOW, &key_of(2), &evidence_message(&equivocation(3, 1))),
        Err(Error::Duplicate)
    );
    // Evidence whose signature fails costs its sender two checks of its share: it runs out.
    let mut forged = equivocation(2, 1);
    forged.second.signature = forged.first.signature;
    let refused = (0..1_000)
        .map(|_| backup.handle_message(NOW, &key_of(3), &evidence_message(&forged)))
        .position(|result| result == Err(Error::OverBudget));
    let checks = small_config().view_change_checks_per_sec as usize;
    assert_eq!(refused, Some(checks.div_ceil(2)));
    // Another peer keeps its own share.
    assert_eq!(
        backup.handle_message(NOW, &key_of(0), &evidence_message(&forged)),
        Err(Error::Certificate(CertificateError::BadSignature))
    );
}

#[test]
fn a_backup_prepares_only_proposals_whose_evidence_holds() {
    let with = |evidence: Vec<Evidence>| Batch {
        requests: vec![request(1)],
        evidence,
    };
    let mut forged = equivocation(3, 1);
    forged.first.signature = forged.second.signature;
    let too_much: Vec<Evidence> = (0..=MAX_BATCH_EVIDENCE as u64)
        .map(|seq| equivocation(3, seq + 1))
        .collect();
    let cases = [
        (
            with(vec![forged]),
            Error::Crypto(pbft_core::CryptoError::BadSignature),
        ),
        (with(too_much), Error::BatchTooLarge),
    ];
    for (proposed, expected) in cases {
        let mut backup = replica(1);
        assert_eq!(
            backup.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &proposed)),
            Err(expected)
        );
        assert!(drain(&mut backup).is_empty());
    }
    let mut backup = replica(1);
    let proposed = with(vec![equivocation(3, 1), equivocation(2, 4)]);
    backup
        .handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &proposed))
        .unwrap();
    let prepared = drain(&mut backup).into_iter().any(|output| {
        matches!(output, Output::Persist(Record::Accepted(vote, ref batch))
            if vote.phase == Phase::PrePrepare && *batch == proposed)
    });
    assert!(prepared, "a proposal with valid evidence is accepted");
}

#[test]
fn a_requests_inclusion_proof_holds_in_a_batch_that_carries_evidence() {
    let proposed = Batch {
        requests: vec![request(1), request(2), request(3)],
        evidence: vec![equivocation(3, 1)],
    };
    let digest = proposed.digest(&chain());
    assert_ne!(
        digest,
        batch(&[1, 2, 3]).digest(&chain()),
        "evidence is in the digest"
    );
    let qc = QuorumCertificate {
        chain_id: chain(),
        epoch: 0,
        view: 0,
        seq: 1,
        digest,
        path: CommitPath::ThreePhase,
        signatures: Vec::new(),
    };
    for (index, request) in proposed.requests.iter().enumerate() {
        let proof = proposed.prove(&chain(), index).unwrap();
        assert_eq!(verify_inclusion(&qc, request, &proof), Ok(()));
    }
    assert_eq!(proposed.prove(&chain(), 3), None, "evidence is no request");
}

#[test]
fn pending_evidence_holds_the_primary_to_the_view_timeout() {
    let mut backup = replica(1);
    backup
        .handle_message(NOW, &key_of(3), &evidence_message(&equivocation(0, 1)))
        .unwrap();
    drain(&mut backup);
    // Timers fire in order (heartbeats first) until the view's deadline passes.
    let due = NOW + small_config().view_timeout_ms;
    let mut changed = false;
    while let Some(at) = backup.poll_timeout().filter(|&at| at <= due) {
        backup.handle_timeout(at);
        changed |= drain(&mut backup).into_iter().any(|output| {
            matches!(output, Output::Persist(Record::ViewChange(change)) if change.view == 1)
        });
    }
    assert!(changed, "a primary that leaves evidence out is replaced");
    assert_eq!(backup.view(), 1);
}

#[test]
fn evidence_is_bound_to_its_signatures_in_the_batch_digest() {
    let evidence = equivocation(2, 1);
    let mut resigned = evidence.clone();
    // Another valid signature by the same key over the same vote cannot exist (ed25519 is
    // deterministic), so change what is signed: the digest must differ.
    resigned.second = vote_for(2, Phase::Commit, (0, 1), batch(&[3]).digest(&chain()));
    assert_ne!(evidence.digest(&chain()), resigned.digest(&chain()));
    let unsigned = Vote {
        signature: pbft_core::Signature([0; 64]),
        ..evidence.second.clone()
    };
    let stripped = Evidence {
        second: unsigned,
        ..evidence.clone()
    };
    assert_ne!(evidence.digest(&chain()), stripped.digest(&chain()));
}

/// A double-signing primary whose first proposal for a slot a backup refused: its batch
/// repeats a request already in flight here (from the primary's other history). The refused
/// pre-prepare is still the primary's signed statement, so its other proposal for the slot
/// completes the evidence, whether that one is accepted or refused too.
#[test]
fn a_refused_proposal_still_convicts_a_primary_that_signs_another_for_its_slot() {
    let from = key_of(0);
    // Accepted later: the second proposal for slot 2 is valid.
    let mut backup = replica(1);
    backup
        .handle_message(NOW, &from, &pre_prepare(0, (0, 1), &batch(&[1])))
        .unwrap();
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(0, (0, 2), &batch(&[1, 2]))),
        Err(Error::DuplicateRequest)
    );
    assert_eq!(reported(&drain(&mut backup)), 0);
    backup
        .handle_message(NOW, &from, &pre_prepare(0, (0, 2), &batch(&[3])))
        .unwrap();
    let outputs = drain(&mut backup);
    assert_eq!(reported(&outputs), 1, "{outputs:?}");
    let sent = forwarded(&outputs);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].offender(), ReplicaId(0));
    assert_eq!(
        pbft_core::verify_evidence(&chain(), &validator_set(4), &sent[0]),
        Ok(())
    );

    // Refused too: the second refusal completes it.
    let mut backup = replica(2);
    backup
        .handle_message(NOW, &from, &pre_prepare(0, (0, 1), &batch(&[1])))
        .unwrap();
    let _ = backup.handle_message(NOW, &from, &pre_prepare(0, (0, 2), &batch(&[1, 2])));
    assert_eq!(
        backup.handle_message(NOW, &from, &pre_prepare(0, (0, 2), &batch(&[1, 3]))),
        Err(Error::Equivocation(ReplicaId(0)))
    );
    assert_eq!(reported(&drain(&mut backup)), 1);
    // The same refused proposal again costs no check and proves nothing new.
    let checked = backup.metrics().signatures_verified;
    let _ = backup.handle_message(NOW, &from, &pre_prepare(0, (0, 2), &batch(&[1, 2])));
    assert_eq!(backup.metrics().signatures_verified, checked);
}

/// Evidence logged before a restart is pending again after it, with a full view timeout from
/// the first input (not from the restore, before the time was known), and goes to the
/// primary, which proposes it (or again, if it committed while this backup was down).
#[test]
fn restored_evidence_gets_its_time_from_the_first_input_and_goes_to_the_primary() {
    let evidence = equivocation(3, 1);
    let mut restored = Replica::restore(
        small_config(),
        validator_set(4),
        pbft_core::testing::validator_key(1),
        vec![Record::Evidence(evidence.clone())],
        pbft_core::ExecutedState::default(),
    )
    .unwrap();
    // The host's clock counts from its own start: far past a timeout after the restore.
    let start = 60_000;
    restored.handle_timeout(start);
    let outputs = drain(&mut restored);
    let to_primary = outputs.iter().any(|output| {
        matches!(output, Output::Send { to: Destination::Validator(id), bytes }
            if id.0 == 0 && bytes == &evidence_message(&evidence))
    });
    assert!(to_primary, "handed to the primary");
    let timeout = small_config().view_timeout_ms;
    let mut changed_at = None;
    while let Some(at) = restored.poll_timeout().filter(|&at| at <= start + timeout) {
        restored.handle_timeout(at);
        let left = drain(&mut restored)
            .into_iter()
            .any(|output| matches!(output, Output::Persist(Record::ViewChange(_))));
        if left && changed_at.is_none() {
            changed_at = Some(at);
        }
    }
    assert_eq!(
        changed_at,
        Some(start + timeout),
        "the primary gets a full view timeout"
    );
}
