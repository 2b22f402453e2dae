//! What one Byzantine validator can make a replica verify. A flood of valid but useless view
//! changes for ever higher views, each carrying a full window of prepared certificates, or of
//! new views stuffed with signatures (relayed under another signer's name, or signed by the
//! view's own primary around a bad certificate), costs a bounded number of signature checks
//! however long it lasts; the honest validators still move the replica.

use pbft_core::testing::{NOW, chain, key_of, new_view, view_change, vote, vote_for};
use pbft_core::{
    Batch, BatchAt, Config, Message, Phase, Prepared, Replica, Request, ViewChange, Vote,
};

/// Prepared certificates per view change: a window's worth, each a quorum of signatures.
const WINDOW: u64 = 32;

fn config() -> Config {
    let mut config = pbft_core::testing::small_config();
    config.window = WINDOW;
    config.checkpoint_interval = WINDOW / 2;
    config
}

fn replica(index: usize) -> Replica {
    pbft_core::testing::replica(index, config())
}

/// A batch of one request, different for every seq.
fn batch_at(seq: u64) -> Batch {
    Batch::of(vec![Request::new(
        &chain(),
        &pbft_core::testing::client_key(0),
        seq,
        format!("op {seq}").into_bytes(),
    )])
}

/// A full window of prepared certificates from view 0 (primary 0, prepares of 1 and 2):
/// `WINDOW` * 3 valid signatures.
fn full_window() -> Vec<Prepared> {
    (1..=WINDOW)
        .map(|seq| {
            let batch = batch_at(seq);
            Prepared {
                proposal: vote(0, Phase::PrePrepare, (0, seq), &batch),
                prepares: vec![
                    vote(1, Phase::Prepare, (0, seq), &batch),
                    vote(2, Phase::Prepare, (0, seq), &batch),
                ],
            }
        })
        .collect()
}

/// Validator `signer`'s valid view change to `view` carrying `prepared`.
fn change(signer: usize, view: u64, prepared: &[Prepared]) -> Vec<u8> {
    Message::ViewChange(view_change(signer, view, prepared.to_vec())).encode()
}

/// The proposals the primary of `view` makes for a quorum that prepared `prepared`.
fn reproposals(signer: usize, view: u64, prepared: &[Prepared]) -> Vec<Vote> {
    prepared
        .iter()
        .map(|p| {
            vote_for(
                signer,
                Phase::PrePrepare,
                (view, p.proposal.seq),
                p.proposal.digest,
            )
        })
        .collect()
}

/// A quorum of view changes for view 1 (signers 1, 2, 3), each with the full window.
fn quorum_for_view_one(prepared: &[Prepared]) -> Vec<ViewChange> {
    (1..=3)
        .map(|signer| view_change(signer, 1, prepared.to_vec()))
        .collect()
}

/// Signatures replica 0 checks when validator 3 sends it `count` view changes for views 1, 2,
/// ..., each valid and carrying a full window of prepared certificates.
fn view_change_flood(count: u64) -> (Replica, u64) {
    let prepared = full_window();
    let mut victim = replica(0);
    for view in 1..=count {
        let _ = victim.handle_message(NOW, &key_of(3), &change(3, view, &prepared));
    }
    let verified = victim.metrics().signatures_verified;
    (victim, verified)
}

#[test]
fn a_flood_of_view_changes_for_ever_higher_views_costs_a_bounded_number_of_checks() {
    let (_, short) = view_change_flood(100);
    let (mut victim, long) = view_change_flood(200);
    println!("view-change flood: 100 messages cost {short} signature checks, 200 cost {long}");
    assert_eq!(
        short, long,
        "a flood twice as long must cost no more: {short} then {long} signatures checked"
    );
    assert!(
        victim.metrics().rejected.get("over_budget") >= Some(&100),
        "what was refused unchecked is counted: {:?}",
        victim.metrics().rejected
    );
    // The flooder's share is spent; the honest validators' is not: f + 1 of them move the
    // replica as ever.
    let prepared = full_window();
    for signer in [1, 2] {
        victim
            .handle_message(NOW, &key_of(signer), &change(signer, 1, &prepared))
            .unwrap();
    }
    assert_eq!((victim.view(), victim.in_view()), (1, false));
    // Time restores the flooder's share: its next view change is checked again.
    let before = victim.metrics().signatures_verified;
    victim
        .handle_message(NOW + 60_000, &key_of(3), &change(3, 1_000, &[]))
        .unwrap();
    assert!(victim.metrics().signatures_verified > before);
}

/// Signatures replica 0 checks when validator `sender` sends it `count` copies of `forged`.
fn new_view_flood(sender: usize, forged: &[u8], count: u64) -> (Replica, u64) {
    let mut victim = replica(0);
    for _ in 0..count {
        let _ = victim.handle_message(NOW, &key_of(sender), forged);
    }
    let verified = victim.metrics().signatures_verified;
    (victim, verified)
}

#[test]
fn forged_new_views_cost_a_bounded_number_of_checks() {
    let prepared = full_window();
    let changes = quorum_for_view_one(&prepared);
    let valid = new_view(1, 1, changes.clone(), reproposals(1, 1, &prepared));
    // Validator 3 relays a new view for view 1 signed with its own key, not the primary's.
    let relayed = new_view(3, 1, changes.clone(), reproposals(1, 1, &prepared));
    // The primary of view 1 (validator 1) signs a new view around one forged prepare.
    let mut bad = prepared.clone();
    bad[WINDOW as usize - 1].prepares[1].signature = bad[0].prepares[1].signature;
    let bad_changes: Vec<ViewChange> = (1..=3).map(|s| view_change(s, 1, bad.clone())).collect();
    let signed_by_primary = new_view(1, 1, bad_changes, reproposals(1, 1, &prepared));
    for (sender, forged, what) in [
        (3, &relayed, "relayed under another key"),
        (1, &signed_by_primary, "signed by the primary"),
    ] {
        let bytes = Message::NewView(forged.clone()).encode();
        let (_, short) = new_view_flood(sender, &bytes, 100);
        let (mut victim, long) = new_view_flood(sender, &bytes, 200);
        println!("new views {what}: 100 cost {short} signature checks, 200 cost {long}");
        assert_eq!(
            short, long,
            "new views {what}: a flood twice as long must cost no more: {short} then {long}"
        );
        assert!(victim.metrics().rejected.get("over_budget") >= Some(&100));
        // An honest validator relaying the real new view is still heard.
        let bytes = Message::NewView(valid.clone()).encode();
        victim.handle_message(NOW, &key_of(2), &bytes).unwrap();
        assert_eq!((victim.view(), victim.in_view()), (1, true), "{what}");
    }
}

#[test]
fn the_primary_checks_certificates_once_and_leaves_out_a_view_change_whose_certificates_fail() {
    let prepared = full_window();
    let mut forged = prepared.clone();
    forged[0].prepares[0].signature = forged[0].prepares[1].signature;
    // Replica 1 leads view 1. Validator 0's view change is signed properly but carries a
    // forged prepare; 2's and 3's are sound.
    let mut primary = replica(1);
    let bad = change(0, 1, &forged);
    primary.handle_message(NOW, &key_of(0), &bad).unwrap();
    assert_eq!(
        primary.metrics().signatures_verified,
        1,
        "a backup-to-be checks a view change's own signature only"
    );
    // A second view change makes f + 1: the primary moves to view 1 and has a quorum
    // (0, 1, 2) — but 0's certificates fail when it builds the new view.
    primary
        .handle_message(NOW, &key_of(2), &change(2, 1, &prepared))
        .unwrap();
    assert_eq!((primary.view(), primary.in_view()), (1, false));
    assert_eq!(
        primary.metrics().rejected.get("invalid_view_change"),
        Some(&1)
    );
    // With 3's, the quorum is 1, 2 and 3. The primary holds none of the batches it must
    // re-propose, so it signs nothing yet and asks 2 and 3, whose view changes report them.
    let checked = primary.metrics().signatures_verified;
    primary
        .handle_message(NOW, &key_of(3), &change(3, 1, &prepared))
        .unwrap();
    assert_eq!((primary.view(), primary.in_view()), (1, false));
    let wanted: Vec<(u64, pbft_core::Digest)> = prepared
        .iter()
        .map(|p| (p.proposal.seq, p.proposal.digest))
        .collect();
    let mut asked = Vec::new();
    for output in pbft_core::testing::drain(&mut primary) {
        if let pbft_core::Output::Send {
            to: pbft_core::Destination::Validator(peer),
            bytes,
        } = output
            && let Ok(Message::FetchBatches(fetch)) = Message::decode(&bytes, 1 << 20)
        {
            assert_eq!((fetch.view, &fetch.wanted), (1, &wanted));
            asked.push(peer.0);
        }
    }
    assert_eq!(asked, [2, 3]);
    // A batch not asked for is refused; once 2's answers are in, the view starts without 0.
    let unasked = BatchAt {
        seq: 1,
        batch: batch_at(2),
    };
    assert!(
        primary
            .handle_message(NOW, &key_of(2), &Message::Batch(unasked).encode())
            .is_err()
    );
    for seq in 1..=WINDOW {
        let answer = Message::Batch(BatchAt {
            seq,
            batch: batch_at(seq),
        });
        primary
            .handle_message(NOW, &key_of(2), &answer.encode())
            .unwrap();
    }
    assert_eq!((primary.view(), primary.in_view()), (1, true));
    assert_eq!(primary.metrics().batches_fetched, WINDOW);
    let sent = pbft_core::testing::drain(&mut primary)
        .into_iter()
        .find_map(|output| match output {
            pbft_core::Output::Persist(pbft_core::Record::NewView(new_view)) => Some(new_view),
            _ => None,
        })
        .expect("the primary persists its new view");
    let signers: Vec<u16> = sent.view_changes.iter().map(|c| c.replica.0).collect();
    assert_eq!(signers, [1, 2, 3]);
    // 3's own signature and its certificates; 2's were checked the first time (its own view
    // change needs none).
    let certificates = WINDOW * 3;
    assert_eq!(
        primary.metrics().signatures_verified - checked,
        1 + certificates
    );
    // Every replica accepts the new view.
    let bytes = Message::NewView(sent).encode();
    let mut backup = replica(0);
    backup.handle_message(NOW, &key_of(1), &bytes).unwrap();
    assert_eq!((backup.view(), backup.in_view()), (1, true));
}

/// Votes sent under another validator's name (a prepare, a commit, a checkpoint vote "from"
/// validator 2, sent by validator 1, with a bad signature) are refused before any signature
/// check: a peer cannot buy checks in an honest validator's name.
#[test]
fn votes_in_another_validators_name_cost_no_check() {
    let mut replica = replica(3);
    let digest = batch_at(1).digest(&chain());
    let before = replica.metrics().signatures_verified;
    for (round, phase) in [Phase::Prepare, Phase::Commit, Phase::Checkpoint]
        .into_iter()
        .cycle()
        .take(300)
        .enumerate()
    {
        let mut forged = vote_for(2, phase, (0, 1 + round as u64 % 8), digest);
        forged.signature.0[0] ^= 1;
        let result = replica.handle_message(NOW, &key_of(1), &Message::Vote(forged).encode());
        assert!(
            matches!(result, Err(pbft_core::Error::WrongSigner(_))),
            "{result:?}"
        );
    }
    assert_eq!(replica.metrics().signatures_verified, before);
    // The signer's own vote is still heard.
    let own = vote(2, Phase::Prepare, (0, 1), &batch_at(1));
    let result = replica.handle_message(NOW, &key_of(2), &Message::Vote(own).encode());
    assert!(
        !matches!(result, Err(pbft_core::Error::WrongSigner(_))),
        "{result:?}"
    );
}

/// Requests from 8 clients, numbered 1; the one at `forged` carries another's signature.
fn arrivals(forged: Option<usize>) -> Vec<Request> {
    let mut requests: Vec<Request> = (0..8)
        .map(|i| {
            let client = pbft_core::testing::client_key(i);
            Request::new(&chain(), &client, 1, format!("op of {i}").into_bytes())
        })
        .collect();
    if let Some(index) = forged {
        requests[index].signature = requests[(index + 1) % 8].signature;
    }
    requests
}

#[test]
fn a_backup_checks_arriving_requests_in_one_batch_and_not_again_in_their_pre_prepare() {
    let mut backup = replica(1);
    let verdicts = backup.submit_all(NOW, arrivals(None));
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
    let metrics = backup.metrics().clone();
    assert_eq!(metrics.signatures_verified, 8, "one check per signature");
    assert_eq!(metrics.signatures_batch_verified, 8, "all in one batch");
    // The primary proposes them: only its own signature is checked, the clients' are cached.
    propose(&mut backup, arrivals(None)).unwrap();
    let metrics = backup.metrics();
    assert_eq!(metrics.signatures_cached, 8);
    assert_eq!(
        metrics.signatures_verified, 9,
        "the primary's signature only"
    );
    assert_eq!(metrics.signatures_created, 1, "the backup's prepare");
}

#[test]
fn a_forged_arrival_is_refused_alone_and_its_copy_in_a_pre_prepare_is_checked() {
    let mut backup = replica(1);
    let verdicts = backup.submit_all(NOW, arrivals(Some(3)));
    for (index, verdict) in verdicts.iter().enumerate() {
        match index {
            3 => assert!(
                matches!(verdict, Err(pbft_core::Error::Crypto(_))),
                "{verdict:?}"
            ),
            _ => assert!(verdict.is_ok(), "{index}: {verdict:?}"),
        }
    }
    assert_eq!(backup.metrics().rejected.get("bad_signature"), Some(&1));
    // A pre-prepare carrying the forged request fails its batch check: a cached signature
    // is only ever the very one that verified.
    let before = backup.metrics().signatures_verified;
    assert!(propose(&mut backup, arrivals(Some(3))).is_err());
    assert_eq!(
        backup.metrics().signatures_cached,
        0,
        "counted only when it holds"
    );
    assert_eq!(backup.metrics().signatures_verified, before + 2);
    // And a genuine request whose arrival copy was forged is checked when proposed.
    propose(&mut backup, arrivals(None)).unwrap();
    assert_eq!(backup.metrics().signatures_verified, before + 4);
    assert_eq!(backup.metrics().signatures_cached, 7);
    assert_eq!(
        backup.metrics().signatures_created,
        1,
        "the backup's prepare"
    );
}

#[test]
fn copies_of_one_request_in_a_group_cost_one_check_and_the_watched_bound_costs_none() {
    let mut backup = replica(1);
    let copies = vec![arrivals(None)[0].clone(); 100];
    let verdicts = backup.submit_all(NOW, copies);
    assert!(verdicts.iter().all(Result::is_ok));
    assert_eq!(
        backup.metrics().signatures_verified,
        1,
        "one check for 100 copies"
    );
    // A backup watching its bound's worth refuses the rest before checking them.
    let mut config = config();
    config.max_pending_requests = 3;
    let mut backup = pbft_core::testing::replica(1, config);
    let verdicts = backup.submit_all(NOW, arrivals(None));
    let refused = verdicts
        .iter()
        .filter(|v| matches!(v, Err(pbft_core::Error::Overloaded)))
        .count();
    assert_eq!(refused, 5, "{verdicts:?}");
    assert_eq!(backup.metrics().signatures_verified, 3);
}

#[test]
fn a_forged_copy_neither_stands_for_nor_hides_the_genuine_request() {
    let mut backup = replica(1);
    let genuine = arrivals(None)[3].clone();
    let forged = arrivals(Some(3))[3].clone();
    let verdicts = backup.submit_all(NOW, vec![forged.clone(), genuine.clone(), forged]);
    assert!(
        matches!(verdicts[0], Err(pbft_core::Error::Crypto(_))),
        "{verdicts:?}"
    );
    assert_eq!(verdicts[1], Ok(()));
    assert!(
        matches!(verdicts[2], Err(pbft_core::Error::Crypto(_))),
        "a byte-identical copy of a forgery is one too: {verdicts:?}"
    );
    // The genuine copy is the one watched: a pre-prepare carrying it checks no client
    // signature.
    let before = backup.metrics().signatures_verified;
    propose(&mut backup, vec![genuine]).unwrap();
    assert_eq!(backup.metrics().signatures_verified, before + 1);
    assert_eq!(backup.metrics().signatures_cached, 1);
}

#[test]
fn a_copy_sent_again_after_its_pre_prepare_costs_no_check_and_a_forged_one_does() {
    let mut backup = replica(1);
    // The requests reach the backup first inside the primary's pre-prepare.
    propose(&mut backup, arrivals(None)).unwrap();
    assert_eq!(
        backup.metrics().signatures_verified,
        9,
        "8 clients' and the primary's"
    );
    assert_eq!(forwarded(&mut backup), 0);
    // A copy carrying another signature is no copy: checked, and refused.
    let forged = arrivals(Some(5))[5].clone();
    assert!(matches!(
        backup.submit(NOW + 250, forged),
        Err(pbft_core::Error::Crypto(_))
    ));
    assert_eq!(backup.metrics().signatures_verified, 10);
    // Their clients, with no reply yet, send them again: held against the primary and
    // forwarded to it, not checked; alone or in a group.
    backup.submit(NOW + 250, arrivals(None)[2].clone()).unwrap();
    assert_eq!(backup.metrics().signatures_cached, 1);
    assert_eq!(forwarded(&mut backup), 1);
    let verdicts = backup.submit_all(NOW + 300, arrivals(None));
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
    assert_eq!(backup.metrics().signatures_verified, 10);
    assert_eq!(backup.metrics().signatures_cached, 8);
    assert_eq!(
        forwarded(&mut backup),
        8,
        "seven new, and the watched one again"
    );
}

/// Requests the replica sent to the primary (validator 0) since last asked.
fn forwarded(replica: &mut Replica) -> usize {
    let mut count = 0;
    while let Some(output) = replica.poll_output() {
        if let pbft_core::Output::Send {
            to: pbft_core::Destination::Validator(pbft_core::ReplicaId(0)),
            bytes,
        } = output
            && let Ok(Message::Request(_)) = Message::decode(&bytes, usize::MAX)
        {
            count += 1;
        }
    }
    count
}

/// Whether a verdict is a refused signature (or key).
fn refused(verdict: &Result<(), pbft_core::Error>) -> bool {
    matches!(verdict, Err(pbft_core::Error::Crypto(_)))
}

#[test]
fn a_forged_request_is_never_remembered_as_verified() {
    let forged = || arrivals(Some(3))[3].clone();
    // Inside a pre-prepare whose check fails, nothing is remembered: not the forgery, and not
    // the genuine requests beside it.
    let mut backup = replica(1);
    assert!(propose(&mut backup, arrivals(Some(3))).is_err());
    let before = backup.metrics().signatures_verified;
    assert!(refused(&backup.submit(NOW, forged())));
    backup.submit(NOW, arrivals(None)[0].clone()).unwrap();
    assert_eq!(backup.metrics().signatures_verified, before + 2);
    assert_eq!(backup.metrics().signatures_cached, 0);
    // In a group of arrivals that fails its batch check: refused each time it comes again,
    // alone or in a group.
    let mut backup = replica(1);
    assert!(refused(&backup.submit_all(NOW, arrivals(Some(3)))[3]));
    assert!(refused(&backup.submit(NOW, forged())));
    assert!(refused(
        &backup.submit_all(NOW, vec![forged(), forged()])[1]
    ));
    assert_eq!(backup.metrics().rejected.get("bad_signature"), Some(&4));
    // In a primary's batch, found by bisection: checked again when its client sends it again.
    let mut primary = replica(0);
    primary.submit_all(NOW, arrivals(Some(3)));
    primary.handle_timeout(NOW + 10);
    assert_eq!(primary.metrics().rejected.get("bad_signature"), Some(&1));
    let before = primary.metrics().signatures_verified;
    primary.submit(NOW + 10, forged()).unwrap();
    primary.handle_timeout(NOW + 20);
    assert_eq!(primary.metrics().rejected.get("bad_signature"), Some(&2));
    assert_eq!(primary.metrics().signatures_verified, before + 1);
}

/// The primary's (validator 0's) pre-prepare of `requests` at seq 1, handled by `backup`.
fn propose(backup: &mut Replica, requests: Vec<Request>) -> Result<(), pbft_core::Error> {
    let pre_prepare = pbft_core::testing::pre_prepare(0, (0, 1), &Batch::of(requests));
    backup.handle_message(NOW, &key_of(0), &pre_prepare)
}

#[test]
fn a_copy_of_a_watched_request_with_other_signature_bytes_is_refused_unchecked_and_not_relayed() {
    let mut backup = replica(1);
    propose(&mut backup, arrivals(None)).unwrap();
    forwarded(&mut backup);
    let verified = backup.metrics().signatures_verified;
    let genuine = arrivals(None)[5].clone();
    let forged = arrivals(Some(5))[5].clone();
    // The genuine copy's cache hit makes it watched; the forged one after it in the group
    // is not relayed on its strength.
    let verdicts = backup.submit_all(NOW + 250, vec![genuine, forged.clone()]);
    assert_eq!(verdicts[0], Ok(()));
    assert_eq!(verdicts[1], Err(pbft_core::Error::DuplicateRequest));
    // Nor alone, later.
    assert_eq!(
        backup.submit(NOW + 300, forged),
        Err(pbft_core::Error::DuplicateRequest)
    );
    assert_eq!(backup.metrics().signatures_verified, verified, "no check");
    // Each copy sends the primary the watched one, which verified: never the forgery.
    let mut sent = Vec::new();
    while let Some(output) = backup.poll_output() {
        if let pbft_core::Output::Send { bytes, .. } = output
            && let Ok(Message::Request(request)) = Message::decode(&bytes, usize::MAX)
        {
            sent.push(request);
        }
    }
    assert_eq!(sent, vec![arrivals(None)[5].clone(); 3]);
}
