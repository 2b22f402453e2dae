//! The exactly-once table at its bound (`max_clients`), driven through a validator that
//! executes committed batches: no forgotten request ever runs again, and no client can make
//! the table refuse everyone else by numbering its requests near `u64::MAX`.

use pbft_core::testing::{NOW, chain, client_key, committed, drain, key_of, small_config};
use pbft_core::{
    Batch, ClientRecord, Config, Delivery, Error, ExecutedState, Message, Output, Replica, Request,
};

/// A client that numbers its requests by the time in µs, as `Client::new` advises.
const NOW_US: u64 = 1_700_000_000_000_000;

/// Three clients remembered; checkpoints out of the way.
fn config() -> Config {
    let mut config = small_config();
    config.window = 64;
    config.checkpoint_interval = 64;
    config.retained_batches = 64;
    config.max_clients = 3;
    config.attesting_gateways = vec![gateway().public_key()];
    config
}

/// A listed gateway's key.
fn gateway() -> pbft_core::Keypair {
    pbft_core::Keypair::from_seed(&[0x6b; 32])
}

/// Client `index`'s request numbered `client_seq`.
fn request(index: usize, client_seq: u64) -> Request {
    Request::new(&chain(), &client_key(index), client_seq, b"op".to_vec())
}

/// A host: a backup that executes what commits, keeping its store as `ExecutedState` says.
struct Host {
    replica: Replica,
    seq: u64,
    store: ExecutedState,
}

impl Host {
    fn new() -> Self {
        Host {
            replica: pbft_core::testing::replica(3, config()),
            seq: 0,
            store: ExecutedState::default(),
        }
    }

    /// Commits `requests` as the next batch (with a QC from validators 0 to 2), executes
    /// what the replica says to execute, and returns the delivery.
    fn commit(&mut self, requests: Vec<Request>) -> Delivery {
        self.seq += 1;
        let batch = Batch::of(requests);
        let bytes = Message::Committed(committed(self.seq, &batch)).encode();
        self.replica
            .handle_message(NOW, &key_of(0), &bytes)
            .unwrap();
        let delivery = drain(&mut self.replica)
            .into_iter()
            .find_map(|output| match output {
                Output::Deliver(delivery) => Some(delivery),
                _ => None,
            })
            .expect("the committed batch is delivered");
        assert_eq!(delivery.seq, self.seq);
        let results: Vec<Vec<u8>> = delivery.execute.iter().map(|_| b"ok".to_vec()).collect();
        // As a host keeps its store: rows of the executed requests, then the forgotten
        // clients' rows deleted, the floor and the executed seq.
        for &index in &delivery.execute {
            let request = &delivery.batch.requests[index as usize];
            self.store
                .clients
                .retain(|row| row.client != request.client);
            self.store.clients.push(ClientRecord {
                client: request.client,
                client_seq: request.client_seq,
                request: request.digest(&pbft_core::testing::chain()),
                seq: delivery.seq,
                result: Some(b"ok".to_vec()),
            });
        }
        self.store
            .clients
            .retain(|row| !delivery.forgotten.contains(&row.client));
        self.store.client_floor = delivery.client_floor;
        self.store.executed = delivery.seq;
        let snapshot = delivery.checkpoint.then(Vec::new);
        self.replica
            .executed(NOW, delivery.seq, results, snapshot)
            .unwrap();
        drain(&mut self.replica);
        delivery
    }
}

#[test]
fn one_client_numbering_near_u64_max_cannot_lock_new_clients_out() {
    let mut host = Host::new();
    // The attacker's one request, numbered just below the top.
    let attack = request(100, u64::MAX - 1);
    assert_eq!(host.commit(vec![attack.clone()]).execute, [0]);
    // Then as many fresh clients as the table holds (honest traffic does this on its own).
    for index in 1..=3 {
        assert_eq!(
            host.commit(vec![request(index, NOW_US + index as u64)])
                .execute,
            [0]
        );
    }
    let floor = host.commit(vec![request(4, NOW_US + 4)]).client_floor;
    assert!(
        floor <= NOW_US + 4,
        "the floor must stay at honest clients' numbers, not the attacker's: {floor}"
    );
    // A new client numbering by time is still welcome, at intake and at execution.
    let newcomer = request(50, NOW_US + 10);
    assert_eq!(host.replica.submit(NOW, newcomer.clone()), Ok(()));
    assert_eq!(host.commit(vec![newcomer]).execute, [0]);
    // And the attacker's executed request never runs again, however often it is replayed.
    assert_eq!(host.commit(vec![attack.clone()]).execute, Vec::<u32>::new());
    for index in 5..=12 {
        host.commit(vec![request(index, NOW_US + index as u64)]);
    }
    assert_eq!(host.commit(vec![attack]).execute, Vec::<u32>::new());
    let floor = host.commit(vec![request(51, NOW_US + 20)]).client_floor;
    assert!(floor <= NOW_US + 20, "floor {floor}");
}

/// A listed gateway attests another operation under a client's next number, and it
/// executes: the client's own request under that number is refused (it never runs), a copy of
/// the one that ran gets its reply again, and that reply names the request that ran, so the
/// client refuses it as an answer to its own.
#[test]
fn a_request_executed_in_a_clients_place_never_passes_for_the_clients_own() {
    let mut host = Host::new();
    let client = client_key(0).public_key();
    let forged = (client, NOW_US, b"put k forged".to_vec());
    let forged = pbft_core::attest(&chain(), &gateway(), vec![forged]).remove(0);
    assert_eq!(host.commit(vec![forged.clone()]).execute, [0]);
    let own = Request::new(&chain(), &client_key(0), NOW_US, b"put k mine".to_vec());
    assert_eq!(
        host.replica.submit(NOW, own.clone()),
        Err(Error::NumberTaken)
    );
    assert_eq!(host.commit(vec![own.clone()]).execute, Vec::<u32>::new());
    // The copy of what ran is answered again, with a reply that names it.
    host.replica.submit(NOW, forged.clone()).unwrap();
    let reply = drain(&mut host.replica)
        .into_iter()
        .find_map(|output| match output {
            Output::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .expect("the reply again");
    let mut client = pbft_core::Client::new(
        chain(),
        client_key(0),
        pbft_core::testing::validator_set(4),
        NOW_US,
    );
    client.track(NOW, own);
    assert_eq!(
        client.handle_reply(&reply),
        Err(pbft_core::ClientError::AnotherRequest)
    );
}

#[test]
fn a_forgotten_clients_executed_requests_stay_refused() {
    let mut host = Host::new();
    for index in 1..=8 {
        host.commit(vec![request(index, NOW_US + index as u64)]);
    }
    // Clients 1 to 5 are forgotten; each one's last request is refused, at intake and at
    // execution, and so is anything it numbered below.
    for index in 1..=5 {
        let again = request(index, NOW_US + index as u64);
        assert_eq!(
            host.replica.submit(NOW, again.clone()),
            Err(Error::StaleRequest)
        );
        assert_eq!(host.commit(vec![again]).execute, Vec::<u32>::new());
        let older = request(index, NOW_US + index as u64 - 1);
        assert_eq!(host.commit(vec![older]).execute, Vec::<u32>::new());
    }
    // A request it numbers later runs, once.
    let later = request(1, NOW_US + 100);
    assert_eq!(host.commit(vec![later.clone()]).execute, [0]);
    assert_eq!(host.commit(vec![later]).execute, Vec::<u32>::new());
}

#[test]
fn a_restored_replica_forgets_the_same_clients_as_a_live_one() {
    let mut live = Host::new();
    let mut restarted = Host::new();
    let requests: Vec<Request> = (1..=6)
        .map(|index| request(index, NOW_US + index as u64))
        .chain([request(100, u64::MAX - 1)])
        .chain((7..=9).map(|index| request(index, NOW_US - index as u64)))
        .collect();
    for (position, request) in requests.iter().enumerate() {
        live.commit(vec![request.clone()]);
        restarted.commit(vec![request.clone()]);
        // Restart from the store after every batch: the rebuilt table must make the same
        // decisions as the live one from there on.
        let store = restarted.store.clone();
        restarted.replica = Replica::restore(
            config(),
            pbft_core::testing::validator_set(4),
            pbft_core::testing::validator_key(3),
            [],
            store,
        )
        .unwrap();
        let probe = request.clone();
        let next = requests.get(position + 1).cloned();
        for candidate in [Some(probe), next].into_iter().flatten() {
            let a = live.commit(vec![candidate.clone()]);
            let b = restarted.commit(vec![candidate]);
            assert_eq!(
                (a.execute, a.forgotten, a.client_floor),
                (b.execute, b.forgotten, b.client_floor)
            );
        }
    }
}

/// The signed refusals a backup sends a client's own copy of a request it will not order.
fn refusals(outputs: &[Output]) -> Vec<pbft_core::RequestRefusal> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send {
                to: pbft_core::Destination::Client(_),
                bytes,
            } => match Message::decode(bytes, usize::MAX) {
                Ok(Message::Refusal(refusal)) => Some(refusal),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A client whose clock went back sends a request under a spent number: the backup refuses
/// it with a signed answer naming the request and the highest number spent, so the client
/// can number above it; a copy a validator forwarded gets no answer (its client is not on
/// this link), and a flood of refused requests is answered only within the budget.
#[test]
fn a_stale_request_is_answered_with_the_number_to_beat() {
    use pbft_core::{REFUSALS_PER_CLIENT_PER_SECOND, RefusalReason};
    let mut host = Host::new();
    assert_eq!(host.commit(vec![request(0, NOW_US)]).execute, [0]);
    let stale = request(0, NOW_US - 86_400_000_000);
    assert_eq!(
        host.replica.submit(NOW, stale.clone()),
        Err(Error::StaleRequest)
    );
    let answers = refusals(&drain(&mut host.replica));
    let [answer] = &answers[..] else {
        panic!("one refusal, got {answers:?}");
    };
    assert_eq!(answer.reason, RefusalReason::Stale { last: NOW_US });
    assert_eq!(
        (answer.client, answer.client_seq, answer.request),
        (stale.client, stale.client_seq, stale.digest(&chain()))
    );
    let set = pbft_core::testing::validator_set(4);
    let signer = set.key(answer.replica).expect("a validator");
    assert_eq!(answer.replica, set.id_of(&key_of(3)).unwrap());
    signer
        .verify(&answer.signed_digest(&chain(), 0), &answer.signature)
        .expect("the refusal is signed by the backup");

    // Forwarded by a validator: refused, unanswered.
    let forwarded = Message::Request(request(0, NOW_US - 1)).encode();
    assert_eq!(
        host.replica.handle_message(NOW, &key_of(0), &forwarded),
        Err(Error::StaleRequest)
    );
    assert!(refusals(&drain(&mut host.replica)).is_empty());

    // Over the size limit, from the client itself.
    let mut large = config().max_request_bytes;
    large += 1;
    let oversized = Request::new(&chain(), &client_key(1), NOW_US, vec![7; large]);
    assert!(host.replica.submit(NOW, oversized).is_err());
    let answers = refusals(&drain(&mut host.replica));
    assert!(
        matches!(answers[..], [ref a] if matches!(a.reason, RefusalReason::TooLarge { .. })),
        "{answers:?}"
    );

    // A flood from one key in the same second: answered a few times only.
    for n in 0..50 {
        let _ = host.replica.submit(NOW + 1, request(2, n + 1).clone());
        let _ = host.replica.submit(NOW + 1, request(0, n + 1));
    }
    let answered = refusals(&drain(&mut host.replica));
    let of_client_0 = answered
        .iter()
        .filter(|a| a.client == client_key(0).public_key())
        .count();
    assert_eq!(of_client_0, usize::from(REFUSALS_PER_CLIENT_PER_SECOND) - 1);
}
