//! Unit tests of the intake: batch cutting, signature checks of a batch, pending digests.

use super::super::signatures::{SearchCost, find_forged};
use super::*;
use crate::config::ChainId;
use crate::crypto::Keypair;

fn request(seed: u8, op_len: usize) -> Request {
    let chain = ChainId::from_name("test");
    Request::new(
        &chain,
        &Keypair::from_seed(&[seed; 32]),
        1,
        alloc::vec![0; op_len],
    )
}

#[test]
fn a_batch_is_cut_by_ops_and_by_bytes_but_never_empty() {
    let mut intake = Intake::default();
    for seed in 1..=5 {
        intake.enqueue(request(seed, 100), Digest([seed; 32]));
    }
    assert_eq!(intake.cut(2, usize::MAX).len(), 2);
    let one = request(9, 0).encoded_len() + 100;
    assert_eq!(intake.cut(10, 2 * one).len(), 2, "two fit the bytes");
    assert_eq!(
        intake.cut(10, 1).len(),
        1,
        "one larger than the limit still goes"
    );
    assert_eq!(intake.pending_len(), 0);
}

#[test]
fn pending_requests_are_in_flight_again_after_the_in_flight_set_is_rebuilt() {
    let mut intake = Intake::default();
    for seed in 1..=3 {
        let digest = Digest([seed; 32]);
        assert!(intake.track(digest));
        intake.enqueue(request(seed, 8), digest);
    }
    intake.clear_in_flight();
    intake.track_pending();
    for seed in 1..=3 {
        assert!(
            !intake.track(Digest([seed; 32])),
            "a copy of {seed} is a duplicate"
        );
    }
}

#[test]
fn a_forged_request_is_dropped_and_the_rest_kept_in_order() {
    let chain = ChainId::from_name("test");
    let mut metrics = Metrics::default();
    let mut intake = Intake::default();
    let mut requests: Vec<Request> = (1..=4).map(|seed| request(seed, 8)).collect();
    requests[2].signature = requests[1].signature;
    for r in &requests {
        intake.track(r.digest(&chain));
    }
    let forged = requests[2].digest(&chain);
    let (good, leaves) = intake.verified(&mut metrics, &chain, with_digests(&chain, &requests));
    assert_eq!(
        good,
        [
            requests[0].clone(),
            requests[1].clone(),
            requests[3].clone()
        ]
    );
    assert_eq!(leaves.len(), 3);
    assert!(!intake.is_in_flight(&forged), "no longer in flight");
    assert_eq!(metrics.rejected_total(), 1);
}

/// `requests` with their digests, as the primary queues them.
fn with_digests(chain: &ChainId, requests: &[Request]) -> Vec<(Request, Digest)> {
    let digests = requests.iter().map(|r| r.digest(chain));
    requests.iter().cloned().zip(digests).collect()
}

/// A batch of `n` requests from distinct clients with the ones at `forged` forged (their
/// client's signature over something else: well formed, it costs a full check), all in
/// flight.
fn batch_with_forgeries(intake: &mut Intake, n: u8, forged: &[usize]) -> Vec<Request> {
    let chain = ChainId::from_name("test");
    let mut requests: Vec<Request> = (1..=n).map(|seed| request(seed, 8)).collect();
    for &index in forged {
        let client = Keypair::from_seed(&[index as u8 + 1; 32]);
        requests[index].signature = client.sign(&Digest([0xab; 32]));
    }
    for r in &requests {
        intake.track(r.digest(&chain));
    }
    requests
}

/// Runs [`Intake::verified`] on a batch of `n` with `forged` forged; checks the forged
/// are dropped and counted and the rest kept in order, and returns the metrics and what
/// the search cost.
fn verify_with_forgeries(n: u8, forged: &[usize]) -> (Metrics, SearchCost) {
    let chain = ChainId::from_name("test");
    let mut intake = Intake::default();
    let requests = batch_with_forgeries(&mut intake, n, forged);
    let leaves: Vec<Digest> = requests.iter().map(|r| r.digest(&chain)).collect();
    let checks: Vec<_> = requests
        .iter()
        .zip(&leaves)
        .map(|(r, leaf)| (&r.client, *leaf, &r.signature))
        .collect();
    let (_, cost) = find_forged(&checks);
    let mut metrics = Metrics::default();
    let (good, good_leaves) =
        intake.verified(&mut metrics, &chain, with_digests(&chain, &requests));
    let expected: Vec<Request> = (0..requests.len())
        .filter(|index| !forged.contains(index))
        .map(|index| requests[index].clone())
        .collect();
    assert_eq!(good, expected, "forged {forged:?}: the rest kept, in order");
    assert_eq!(good_leaves.len(), good.len());
    for (index, leaf) in leaves.iter().enumerate() {
        assert_eq!(intake.is_in_flight(leaf), !forged.contains(&index));
    }
    assert_eq!(metrics.rejected_total(), forged.len() as u64);
    assert_eq!(
        metrics.rejected.get("bad_signature"),
        Some(&(forged.len() as u64))
    );
    // The metrics count the batch check that failed and every check of the search; a
    // single request is checked alone, once, with no search.
    if n == 1 {
        assert_eq!(metrics.signatures_verified, 1);
        assert_eq!(metrics.signatures_batch_verified, 0);
        return (metrics, SearchCost::default());
    }
    let first = u64::from(n);
    assert_eq!(metrics.signatures_batch_verified, first + cost.batched);
    assert_eq!(
        metrics.signatures_verified,
        first + cost.batched + cost.single
    );
    (metrics, cost)
}

#[test]
fn one_forged_request_in_64_is_found_by_bisection_with_two_checks_alone() {
    // Checking each alone after the failed batch check made 64 checks alone. Bisection:
    // at most 2·(log2 64 − 1) = 10 more batch checks, 2·(32+16+8+4+2) = 124 signatures
    // in them, and exactly 2 checks alone (the forged request and its neighbour).
    for position in [0, 1, 31, 32, 47, 62, 63] {
        let (metrics, cost) = verify_with_forgeries(64, &[position]);
        assert_eq!(cost.single, 2, "forged at {position}: {cost:?}");
        assert!(cost.batch_checks <= 10, "forged at {position}: {cost:?}");
        assert!(cost.batched <= 124, "forged at {position}: {cost:?}");
        assert_eq!(
            metrics.signatures_verified - metrics.signatures_batch_verified,
            2,
            "checks alone, as the metrics count them"
        );
    }
}

#[test]
fn two_forged_requests_in_64_are_both_found() {
    // Neighbours share their path down the tree: found as one forgery is.
    for forged in [[10, 11], [32, 33], [62, 63]] {
        let (_, cost) = verify_with_forgeries(64, &forged);
        assert_eq!(cost.single, 2, "forged {forged:?}: {cost:?}");
        assert!(cost.batch_checks <= 10, "forged {forged:?}: {cost:?}");
    }
    // Far apart, two paths: once n signatures are batch-checked, failing sets are
    // checked alone, each request at most once.
    for forged in [[0, 63], [5, 40], [31, 32]] {
        let (_, cost) = verify_with_forgeries(64, &forged);
        assert!(cost.batched <= 128, "forged {forged:?}: {cost:?}");
        assert!(cost.single < 64, "forged {forged:?}: {cost:?}");
    }
}

#[test]
fn an_all_forged_batch_costs_a_bounded_search_and_each_check_alone_once() {
    let all: Vec<usize> = (0..64).collect();
    let (_, cost) = verify_with_forgeries(64, &all);
    // Bisecting every level would batch-check 64 signatures per level (320 below the
    // root); splitting stops once 64 are batch-checked, and the rest go alone, once.
    assert!(cost.batched <= 128, "{cost:?}");
    assert_eq!(cost.single, 64, "{cost:?}");
    // Odd sizes split unevenly and still find every forgery.
    let (_, cost) = verify_with_forgeries(7, &[0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(cost.single, 7, "{cost:?}");
    verify_with_forgeries(7, &[6]);
    verify_with_forgeries(3, &[1]);
    verify_with_forgeries(2, &[0]);
    verify_with_forgeries(1, &[0]);
}

#[test]
fn watched_requests_get_new_deadlines_together() {
    let chain = ChainId::from_name("test");
    let mut intake = Intake::default();
    let (a, b) = (request(1, 4), request(2, 4));
    intake.watch(a.digest(&chain), &a, 500);
    intake.watch(b.digest(&chain), &b, 300);
    intake.watch(b.digest(&chain), &b, 100);
    assert_eq!(
        intake.watch_deadline(),
        Some(300),
        "the first deadline stays"
    );
    assert_eq!(intake.rewatch(900).len(), 2);
    assert_eq!(intake.watch_deadline(), Some(900));
    intake.unwatch(&a.digest(&chain));
    assert_eq!(intake.watched_len(), 1);
}

#[test]
fn requests_without_a_leaf_each_are_all_refused_unchecked() {
    let requests: Vec<Request> = (1..=2).map(|seed| request(seed, 8)).collect();
    let leaves = [requests[0].digest(&ChainId::from_name("test"))];
    let (verdicts, checked) = super::super::signatures::check_request_signatures(
        &crate::crypto::Pool::default(),
        &ChainId::from_name("test"),
        &requests,
        &leaves,
    );
    assert_eq!(verdicts, alloc::vec![Err(CryptoError::BadSignature); 2]);
    assert_eq!(checked.signatures, 0);
}
