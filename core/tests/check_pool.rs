//! A host's [`CheckPool`] gets a large batch check cut into pieces, and the verdicts are the
//! ones checking on the caller's thread gives: every piece must hold, and a forged request
//! in any piece is found.

use std::sync::{Arc, Mutex};

use pbft_core::testing::{NOW, chain, client_key, key_of, pre_prepare, replica, small_config};
use pbft_core::{Batch, BatchVerifier, CheckPool, CryptoError, Error, Replica, Request};

/// Checks pieces on the caller's thread and records how many signatures each call's pieces
/// held.
struct Recording {
    width: usize,
    calls: Arc<Mutex<Vec<Vec<usize>>>>,
    /// A faulty pool that answers for one piece fewer than it was given.
    loses_a_piece: bool,
}

impl CheckPool for Recording {
    fn width(&self) -> usize {
        self.width
    }

    fn verify_all(&self, pieces: Vec<BatchVerifier>) -> Vec<Result<(), CryptoError>> {
        let sizes = pieces.iter().map(BatchVerifier::len).collect();
        self.calls.lock().unwrap().push(sizes);
        let mut verdicts: Vec<_> = pieces.into_iter().map(BatchVerifier::verify).collect();
        if self.loses_a_piece {
            verdicts.pop();
        }
        verdicts
    }
}

/// A backup whose checks go through a [`Recording`] pool of `width`, and that pool's calls.
fn backup_with_pool(width: usize) -> (Replica, Arc<Mutex<Vec<Vec<usize>>>>) {
    let mut config = small_config();
    config.max_batch_ops = 1024;
    let mut backup = replica(1, config);
    let calls = Arc::new(Mutex::new(Vec::new()));
    backup.set_check_pool(Box::new(Recording {
        width,
        calls: calls.clone(),
        loses_a_piece: false,
    }));
    (backup, calls)
}

/// One request from each of `count` clients; the one at `forged` carries another's
/// signature.
fn requests(count: usize, forged: Option<usize>) -> Vec<Request> {
    let mut requests: Vec<Request> = (0..count)
        .map(|i| Request::new(&chain(), &client_key(i), 1, format!("op {i}").into_bytes()))
        .collect();
    if let Some(index) = forged {
        requests[index].signature = requests[(index + 1) % count].signature;
    }
    requests
}

#[test]
fn a_pre_prepare_of_100_requests_is_checked_in_three_pieces_that_all_must_hold() {
    let (mut backup, calls) = backup_with_pool(4);
    let batch = Batch::of(requests(100, None));
    backup
        .handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &batch))
        .unwrap();
    // 101 signatures (the primary's and 100 clients'), in pieces of at least 32.
    assert_eq!(*calls.lock().unwrap(), vec![vec![34, 34, 33]]);
    assert_eq!(backup.metrics().signatures_verified, 101);

    // One forged request, in whichever piece it falls, fails the pre-prepare.
    for forged in [0, 1, 2, 50, 99] {
        let (mut backup, calls) = backup_with_pool(4);
        let batch = Batch::of(requests(100, Some(forged)));
        let result = backup.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &batch));
        assert!(
            matches!(result, Err(Error::Crypto(_))),
            "{forged}: {result:?}"
        );
        assert_eq!(calls.lock().unwrap().len(), 1);
    }
}

#[test]
fn arrivals_checked_in_pieces_get_the_verdicts_of_one_thread() {
    for forged in [None, Some(0), Some(37), Some(99)] {
        let (mut split, calls) = backup_with_pool(2);
        let mut inline = replica(1, small_config());
        let verdicts = split.submit_all(NOW, requests(100, forged));
        assert_eq!(verdicts, inline.submit_all(NOW, requests(100, forged)));
        for (index, verdict) in verdicts.iter().enumerate() {
            assert_eq!(
                verdict.is_err(),
                Some(index) == forged,
                "{index}: {verdict:?}"
            );
        }
        // The first check is in two pieces; a failing one is then searched on this thread.
        assert_eq!(calls.lock().unwrap().first(), Some(&vec![50, 50]));
    }
}

#[test]
fn a_batch_too_small_to_cut_stays_on_the_callers_thread() {
    let (mut backup, calls) = backup_with_pool(8);
    let verdicts = backup.submit_all(NOW, requests(63, None));
    assert!(verdicts.iter().all(Result::is_ok));
    assert!(
        calls.lock().unwrap().is_empty(),
        "63 signatures make one piece"
    );
    assert_eq!(backup.metrics().signatures_verified, 63);
}

#[test]
fn pieces_are_cut_for_the_signatures_left_after_the_cached_ones() {
    let batch = Batch::of(requests(100, None));
    for (arrived, calls_after) in [(90, 1), (40, 1), (20, 2)] {
        let (mut backup, calls) = backup_with_pool(4);
        // Some of the batch's requests arrive at the backup first and are checked there.
        let arrivals = requests(100, None)[..arrived].to_vec();
        assert!(backup.submit_all(NOW, arrivals).iter().all(Result::is_ok));
        let before = calls.lock().unwrap().len();
        backup
            .handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &batch))
            .unwrap();
        assert_eq!(backup.metrics().signatures_cached, arrived as u64);
        // What is left (the primary's and the uncached clients') is cut on its own size: 11
        // and 61 stay on this thread, 81 go in two pieces of at least 32.
        let calls = calls.lock().unwrap();
        assert_eq!(
            calls.len() - before,
            calls_after - 1,
            "{arrived}: {calls:?}"
        );
        assert!(calls.iter().flatten().all(|&size| size >= 32), "{calls:?}");
    }
}

#[test]
fn a_pool_that_answers_for_fewer_pieces_than_it_got_vouches_for_nothing() {
    let mut config = small_config();
    config.max_batch_ops = 1024;
    let mut backup = replica(1, config);
    backup.set_check_pool(Box::new(Recording {
        width: 2,
        calls: Arc::default(),
        loses_a_piece: true,
    }));
    let batch = Batch::of(requests(100, None));
    let result = backup.handle_message(NOW, &key_of(0), &pre_prepare(0, (0, 1), &batch));
    assert!(matches!(result, Err(Error::Crypto(_))), "{result:?}");
}
