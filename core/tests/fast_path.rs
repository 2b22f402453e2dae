//! The fast path: a replica holding every validator's vote of the prepare phase commits
//! without the commit round; its QC verifies anywhere and only with all n votes; and each
//! replica's vote outlives its view and a restart, so that the next view re-proposes a batch
//! that may have committed this way.

use pbft_core::Destination::Validator;
use pbft_core::testing::{
    NOW, batch, chain, drain, key_of, pre_prepare, small_config, validator_key, validator_set,
    view_change, view_change_with_votes, vote, vote_for,
};
use pbft_core::{
    Batch, BatchAt, CertificateError, CommitPath, Config, Destination, Error, ExecutedState,
    FetchBatches, Message, NewView, Output, Phase, Prepared, PreparedClaim, QuorumCertificate,
    Record, Replica, ReplicaId, ViewChange, ViewChangeError, null_digest, plan, verify_new_view,
    verify_qc,
};

fn config(fast_path: bool) -> Config {
    let mut config = small_config();
    config.fast_path = fast_path;
    config
}

/// Feeds `replica` the votes of `signers` of `phase` for batch [1] at (0, 1). Each counts, or
/// completes nothing (a prepare past a prepared slot without the fast path).
fn votes(replica: &mut Replica, phase: Phase, signers: &[usize]) {
    for &signer in signers {
        let bytes = Message::Vote(vote(signer, phase, (0, 1), &batch(&[1]))).encode();
        match replica.handle_message(NOW, &key_of(signer), &bytes) {
            Ok(()) | Err(Error::NotNeeded) => {}
            Err(err) => panic!("vote of {signer}: {err}"),
        }
    }
}

/// Backup 3 given the primary's pre-prepare of batch [1] at (0, 1) and the prepares of
/// backups 1 and 2: with its own, every validator's vote. Returns what it output.
fn backup_with_every_prepare(config: Config) -> (Replica, Vec<Output>) {
    let mut backup = pbft_core::testing::replica(3, config);
    let proposal = pre_prepare(0, (0, 1), &batch(&[1]));
    backup.handle_message(NOW, &key_of(0), &proposal).unwrap();
    votes(&mut backup, Phase::Prepare, &[1, 2]);
    let outputs = drain(&mut backup);
    (backup, outputs)
}

/// Backup 3 rebuilt from `records` alone (its store executed nothing).
fn restored_backup(records: Vec<Record>) -> Replica {
    Replica::restore(
        config(true),
        validator_set(4),
        validator_key(3),
        records,
        ExecutedState::default(),
    )
    .expect("a valid config and key")
}

fn delivered(outputs: &[Output]) -> Option<QuorumCertificate> {
    outputs.iter().find_map(|output| match output {
        Output::Deliver(delivery) => Some(delivery.certificate.clone()),
        _ => None,
    })
}

#[test]
fn every_vote_of_the_prepare_phase_commits_without_the_commit_round() {
    let (backup, outputs) = backup_with_every_prepare(config(true));
    let qc = delivered(&outputs).expect("delivered before any other commit came");
    assert_eq!(qc.path, CommitPath::Fast);
    assert_eq!(qc.signatures.len(), 4, "all n");
    verify_qc(&chain(), &validator_set(4), &qc).expect("a light client accepts it");
    assert_eq!(backup.metrics().fast_commits, 1);
    // The commit round still runs for the replicas that lack a vote.
    let commit_sent = outputs.iter().any(|output| {
        matches!(output, Output::Persist(Record::Signed(vote)) if vote.phase == Phase::Commit)
    });
    assert!(commit_sent);

    // Without the fast path the same replica waits for a quorum of commits.
    let (mut slow, outputs) = backup_with_every_prepare(config(false));
    assert_eq!(delivered(&outputs), None);
    votes(&mut slow, Phase::Commit, &[1, 2]);
    let qc = delivered(&drain(&mut slow)).expect("a quorum of commits");
    assert_eq!(qc.path, CommitPath::ThreePhase);
    assert_eq!(slow.metrics().fast_commits, 0);
}

#[test]
fn a_fast_qc_needs_every_validator_and_the_primarys_own_proposal() {
    let (_, outputs) = backup_with_every_prepare(config(true));
    let qc = delivered(&outputs).expect("fast commit");
    let set = validator_set(4);

    let mut short = qc.clone();
    short.signatures.remove(3);
    assert_eq!(
        verify_qc(&chain(), &set, &short),
        Err(CertificateError::TooFewSignatures { got: 3, needed: 4 })
    );

    // The primary's prepare in place of its pre-prepare: not the statement a fast QC names.
    let mut primary_prepared = qc.clone();
    let digest = batch(&[1]).digest(&chain());
    primary_prepared.signatures[0].1 = vote_for(0, Phase::Prepare, (0, 1), digest).signature;
    assert_eq!(
        verify_qc(&chain(), &set, &primary_prepared),
        Err(CertificateError::BadSignature)
    );

    // Prepares are not commits: the same signatures on the three-phase path do not verify.
    let as_commits = QuorumCertificate {
        path: CommitPath::ThreePhase,
        ..qc
    };
    assert_eq!(
        verify_qc(&chain(), &set, &as_commits),
        Err(CertificateError::BadSignature)
    );
}

/// The view change `replica` persisted last.
fn persisted_view_change(outputs: &[Output]) -> ViewChange {
    outputs
        .iter()
        .rev()
        .find_map(|output| match output {
            Output::Persist(Record::ViewChange(change)) => Some(change.clone()),
            _ => None,
        })
        .expect("a view change")
}

/// Moves `replica` to `view` the way f + 1 peers do: backups 1 and 2 ask for it.
fn pushed_to(replica: &mut Replica, view: u64) -> ViewChange {
    for signer in [1, 2] {
        let change = view_change(signer, view, vec![]);
        let bytes = Message::ViewChange(change).encode();
        replica
            .handle_message(NOW, &key_of(signer), &bytes)
            .unwrap();
    }
    persisted_view_change(&drain(replica))
}

#[test]
fn a_view_change_reports_the_latest_vote_across_views_and_restarts() {
    // Backup 3 prepared batch [1] at (0, 1) and saw no other vote: no certificate, one vote.
    let mut backup = pbft_core::testing::replica(3, config(true));
    let proposal = pre_prepare(0, (0, 1), &batch(&[1]));
    backup.handle_message(NOW, &key_of(0), &proposal).unwrap();
    drain(&mut backup);
    let claim = PreparedClaim {
        seq: 1,
        view: 0,
        digest: batch(&[1]).digest(&chain()),
    };
    let to_1 = pushed_to(&mut backup, 1);
    assert!(to_1.prepared.is_empty());
    assert_eq!(to_1.voted, [claim]);

    // Restarted from its compacted log, after it left view 0 for good.
    let mut restored = restored_backup(backup.durable_records());
    drain(&mut restored);
    let to_2 = pushed_to(&mut restored, 2);
    assert_eq!(to_2.voted, [claim], "the vote of view 0 is still reported");
}

fn claim(view: u64, digest_of: &[u64]) -> PreparedClaim {
    PreparedClaim {
        seq: 1,
        view,
        digest: batch(digest_of).digest(&chain()),
    }
}

/// Replica 0's pre-prepare of `batch(ops)` at (0, 1) with prepares of 1 and 2.
fn prepared_in_view_0(ops: &[u64]) -> Prepared {
    let proposed = batch(ops);
    Prepared {
        proposal: vote(0, Phase::PrePrepare, (0, 1), &proposed),
        prepares: vec![
            vote(1, Phase::Prepare, (0, 1), &proposed),
            vote(2, Phase::Prepare, (0, 1), &proposed),
        ],
    }
}

/// The certificate of batch [2] at (0, 1).
fn prepared_other() -> Prepared {
    prepared_in_view_0(&[2])
}

#[test]
fn f_plus_1_reported_votes_decide_a_seq_and_f_do_not() {
    let set = validator_set(4);
    let voted = |signers: &[usize]| -> Vec<ViewChange> {
        (1..4)
            .map(|signer| {
                let votes = match signers.contains(&signer) {
                    true => vec![claim(0, &[1])],
                    false => vec![],
                };
                view_change_with_votes(signer, 1, vec![], votes)
            })
            .collect()
    };
    let two = plan(&chain(), &set, &voted(&[2, 3]));
    assert_eq!(two.proposals, [(1, batch(&[1]).digest(&chain()))]);
    // One report may be a faulty validator's alone: it decides nothing.
    let one = plan(&chain(), &set, &voted(&[3]));
    assert!(one.proposals.is_empty());
}

#[test]
fn a_certificate_beats_votes_of_its_own_view_and_loses_to_a_later_views() {
    let set = validator_set(4);
    let other = batch(&[2]).digest(&chain());
    // View 0: a certificate for [2] against two reports of [1]. (Not both can be honest
    // when [1] committed on the fast path; the rule keeps the certificate.)
    let same_view = vec![
        view_change(1, 1, vec![prepared_other()]),
        view_change_with_votes(2, 1, vec![], vec![claim(0, &[1])]),
        view_change_with_votes(3, 1, vec![], vec![claim(0, &[1])]),
    ];
    assert_eq!(plan(&chain(), &set, &same_view).proposals, [(1, other)]);
    // Two reports of [1] from view 1 beat a certificate from view 0.
    let later = vec![
        view_change(1, 2, vec![prepared_other()]),
        view_change_with_votes(2, 2, vec![], vec![claim(1, &[1])]),
        view_change_with_votes(3, 2, vec![], vec![claim(1, &[1])]),
    ];
    assert_eq!(
        plan(&chain(), &set, &later).proposals,
        [(1, batch(&[1]).digest(&chain()))]
    );
}

#[test]
fn a_new_view_that_drops_a_batch_f_plus_1_voted_for_is_refused() {
    let set = validator_set(4);
    let changes = vec![
        view_change_with_votes(1, 1, vec![], vec![]),
        view_change_with_votes(2, 1, vec![], vec![claim(0, &[1])]),
        view_change_with_votes(3, 1, vec![], vec![claim(0, &[1])]),
    ];
    let null = vote_for(1, Phase::PrePrepare, (1, 1), null_digest(&chain()));
    let dropped: NewView = pbft_core::testing::new_view(1, 1, changes.clone(), vec![null]);
    assert_eq!(
        verify_new_view(&chain(), &set, 4, &dropped),
        Err(ViewChangeError::WrongProposal(1))
    );
    let kept = vote(1, Phase::PrePrepare, (1, 1), &batch(&[1]));
    let valid = pbft_core::testing::new_view(1, 1, changes, vec![kept]);
    let plan = verify_new_view(&chain(), &set, 4, &valid).expect("re-proposes the batch");
    assert_eq!(plan.proposals, [(1, batch(&[1]).digest(&chain()))]);
    // A lie about a vote is the liar's alone: its signature covers what it reported, so
    // a relayer cannot add a report to someone else's view change.
    let mut forged = valid.clone();
    forged.view_changes[0].voted = vec![claim(0, &[2])];
    assert_eq!(
        verify_new_view(&chain(), &set, 4, &forged),
        Err(ViewChangeError::BadSignature)
    );
}

#[test]
fn votes_for_one_batch_in_different_views_add_up() {
    let set = validator_set(4);
    // Replica 1 followed view 1, which re-proposed [1]; replica 2 never entered it; replica
    // 3 (faulty, say) reports nothing. Two reports of [1], in two views: it counts from the
    // lower one.
    let split = vec![
        view_change_with_votes(1, 2, vec![], vec![claim(1, &[1])]),
        view_change_with_votes(2, 2, vec![], vec![claim(0, &[1])]),
        view_change_with_votes(3, 2, vec![], vec![]),
    ];
    assert_eq!(
        plan(&chain(), &set, &split).proposals,
        [(1, batch(&[1]).digest(&chain()))]
    );
    // A faulty validator's report from a higher view does not lift a batch above a
    // certificate: the second-highest report (f + 1 = 2) is what counts.
    let inflated = vec![
        view_change(1, 9, vec![prepared_other()]),
        view_change_with_votes(2, 9, vec![], vec![claim(0, &[1])]),
        view_change_with_votes(3, 9, vec![], vec![claim(8, &[1])]),
    ];
    let other = batch(&[2]).digest(&chain());
    assert_eq!(plan(&chain(), &set, &inflated).proposals, [(1, other)]);
}

#[test]
fn a_voted_batch_outlives_restarts_and_compactions() {
    // Backup 3 voted for batch [1] at (0, 1) and holds it only from the pre-prepare.
    let mut backup = pbft_core::testing::replica(3, config(true));
    let proposal = pre_prepare(0, (0, 1), &batch(&[1]));
    backup.handle_message(NOW, &key_of(0), &proposal).unwrap();
    let logged: Vec<Record> = drain(&mut backup)
        .into_iter()
        .filter_map(|output| match output {
            Output::Persist(record) => Some(record),
            _ => None,
        })
        .collect();
    let holds_batch = |records: &[Record]| {
        records
            .iter()
            .any(|record| matches!(record, Record::Accepted(_, b) if *b == batch(&[1])))
    };
    assert!(holds_batch(&logged));
    // Restarted, compacted, restarted and compacted again: the batch is still in the log.
    let mut records = logged;
    for _ in 0..2 {
        records = restored_backup(records).durable_records();
        assert!(holds_batch(&records), "{records:?}");
    }
}

/// What `replica` sent as encoded messages, with their destinations.
fn sent(outputs: &[Output]) -> Vec<(Destination, Message)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { to, bytes } => Some((to.clone(), Message::decode(bytes, 1 << 20).ok()?)),
            _ => None,
        })
        .collect()
}

/// The batches `replica` sends validator 2, the primary of view 2, when it asks for `digest`
/// at seq 1 (the replica changing to view 2); each must go to validator 2 at seq 1.
fn served_to_view_2s_primary(
    replica: &mut Replica,
    digest: pbft_core::Digest,
) -> Vec<pbft_core::Batch> {
    let fetch = Message::FetchBatches(FetchBatches {
        view: 2,
        wanted: vec![(1, digest)],
    });
    replica
        .handle_message(NOW, &key_of(2), &fetch.encode())
        .unwrap();
    sent(&drain(replica))
        .into_iter()
        .filter_map(|(to, message)| match message {
            Message::Batch(answer) => {
                assert_eq!((to, answer.seq), (Validator(ReplicaId(2)), 1));
                Some(answer.batch)
            }
            _ => None,
        })
        .collect()
}

/// A batch that f + 1 view changes report votes for is re-proposed from the votes alone, so
/// its new primary must hold it: one that never saw it fetches it from those validators,
/// logs it before its new view leaves, and after a restart still holds it for the next view.
#[test]
fn a_new_primary_fetches_the_batch_it_re_proposes_and_keeps_it_across_a_restart() {
    let voted = vec![claim(0, &[1])];
    let digest = voted[0].digest;
    let mut primary = pbft_core::testing::replica(1, config(true));
    let mut records = Vec::new();
    for signer in [2, 3] {
        let change = view_change_with_votes(signer, 1, Vec::new(), voted.clone());
        let bytes = Message::ViewChange(change).encode();
        primary
            .handle_message(NOW, &key_of(signer), &bytes)
            .unwrap();
    }
    // Its own view change makes a quorum, but it holds no batch for the plan's seq 1.
    assert_eq!((primary.view(), primary.in_view()), (1, false));
    let outputs = drain(&mut primary);
    let asked: Vec<_> = sent(&outputs)
        .into_iter()
        .filter_map(|(to, message)| match message {
            Message::FetchBatches(fetch) => Some((to, fetch.view, fetch.wanted)),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        [
            (Validator(ReplicaId(2)), 1, vec![(1, digest)]),
            (Validator(ReplicaId(3)), 1, vec![(1, digest)]),
        ]
    );
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::Persist(Record::NewView(_)))),
        "no new view without the batch"
    );
    records.extend(outputs);
    // Validator 3 answers: the batch is logged, then the new view is signed and sent.
    let answer = Message::Batch(BatchAt {
        seq: 1,
        batch: batch(&[1]),
    });
    primary
        .handle_message(NOW, &key_of(3), &answer.encode())
        .unwrap();
    assert_eq!((primary.view(), primary.in_view()), (1, true));
    let outputs = drain(&mut primary);
    let accepted = outputs
        .iter()
        .position(|o| matches!(o, Output::Persist(Record::Accepted(p, b)) if p.digest == digest && *b == batch(&[1])));
    let new_view = outputs
        .iter()
        .position(|o| matches!(o, Output::Persist(Record::NewView(_))));
    assert!(
        accepted.is_some() && accepted < new_view,
        "the batch is logged before the new view: {outputs:?}"
    );
    records.extend(outputs);
    // Restarted from its records, it still holds the batch and serves it to the primary of
    // view 2 once it changes to that view.
    let persisted = records.into_iter().filter_map(|output| match output {
        Output::Persist(record) => Some(record),
        _ => None,
    });
    let mut restored = Replica::restore(
        config(true),
        validator_set(4),
        validator_key(1),
        persisted,
        ExecutedState::default(),
    )
    .expect("a valid config and key");
    drain(&mut restored);
    // Validators 2 and 3 move it to view 2; its view change reports its re-proposal.
    for signer in [2, 3] {
        let change = view_change(signer, 2, vec![]);
        let bytes = Message::ViewChange(change).encode();
        restored
            .handle_message(NOW, &key_of(signer), &bytes)
            .unwrap();
    }
    let reported = persisted_view_change(&drain(&mut restored)).voted;
    assert_eq!(reported, [claim(1, &[1])]);
    assert_eq!(
        served_to_view_2s_primary(&mut restored, digest),
        [batch(&[1])]
    );
}

/// A backup that voted for a batch keeps it after a new view proposed another one at that
/// seq (whose batch it never got, so it voted for nothing there), and across a restart: an
/// old prepared certificate brings the batch back in a later view, and then the backup serves
/// it and prepares it.
/// Hands `backup` the new view of `view` (from its primary, `view` mod 4) built on `changes`
/// and re-proposing `reproposed` at seq 1; checks that the backup entered it.
fn enter_reproposing(
    backup: &mut Replica,
    view: u64,
    changes: Vec<ViewChange>,
    reproposed: &Batch,
) {
    let primary = view as usize % 4;
    let reproposal = vote(primary, Phase::PrePrepare, (view, 1), reproposed);
    let new_view = pbft_core::testing::new_view(primary, view, changes, vec![reproposal]);
    backup
        .handle_message(NOW, &key_of(primary), &Message::NewView(new_view).encode())
        .unwrap();
    assert_eq!((backup.view(), backup.in_view()), (view, true));
}

#[test]
fn the_batch_of_a_backups_latest_vote_outlives_a_view_that_proposed_another() {
    // Also when it prepared the batch and restarted from a compacted log, which keeps the
    // batch only inside the prepared certificate's record.
    for prepared_and_restarted in [false, true] {
        // Without the fast path, one more prepare prepares the slot but commits nothing.
        let mut backup = pbft_core::testing::replica(3, config(false));
        let proposal = pre_prepare(0, (0, 1), &batch(&[1]));
        backup.handle_message(NOW, &key_of(0), &proposal).unwrap();
        if prepared_and_restarted {
            votes(&mut backup, Phase::Prepare, &[1]);
            backup = restored_backup(backup.durable_records());
        }
        drain(&mut backup);
        // View 1 re-proposes batch [2] at seq 1, from a certificate backup 3 never saw.
        let changes = vec![
            view_change(0, 1, vec![prepared_other()]),
            view_change(1, 1, vec![]),
            view_change(2, 1, vec![]),
        ];
        enter_reproposing(&mut backup, 1, changes, &batch(&[2]));
        assert!(
            !drain(&mut backup).iter().any(
                |o| matches!(o, Output::Persist(Record::Signed(v)) if v.phase == Phase::Prepare)
            ),
            "no prepare without the batch"
        );
        // A restart from its compacted log keeps the batch too.
        let mut backup = restored_backup(backup.durable_records());
        drain(&mut backup);
        // Validators 0 and 1 move it to view 2, whose primary asks for batch [1]: it is kept.
        for signer in [0, 1] {
            let change = view_change(signer, 2, vec![prepared_in_view_0(&[1])]);
            let bytes = Message::ViewChange(change).encode();
            backup.handle_message(NOW, &key_of(signer), &bytes).unwrap();
        }
        drain(&mut backup);
        let one = batch(&[1]).digest(&chain());
        assert_eq!(served_to_view_2s_primary(&mut backup, one), [batch(&[1])]);
        // View 2 re-proposes batch [1] from the old certificate: the backup prepares it at once.
        let changes = (0..3)
            .map(|signer| view_change(signer, 2, vec![prepared_in_view_0(&[1])]))
            .collect();
        enter_reproposing(&mut backup, 2, changes, &batch(&[1]));
        let outputs = drain(&mut backup);
        assert!(
            outputs
                .iter()
                .any(|o| matches!(o, Output::Persist(Record::Signed(v))
                if v.phase == Phase::Prepare && (v.view, v.seq, v.digest) == (2, 1, one))),
            "the backup prepares the batch it kept: {outputs:?}"
        );
    }
}
