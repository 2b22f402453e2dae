//! Fuzz targets. Each holds for every input: no panic, and memory within the config's bounds.

use std::time::Duration;

use bolero::check;
use pbft_core::testing::{
    self, batch, chain, client_key, committed, key_of, new_view, pre_prepare, request,
    small_config, validator_set, view_change, vote,
};
use pbft_core::{
    Client, Config, FetchState, Gateway, GatewayConfig, GatewayOutput, Manifest, Message, Phase,
    PublicKey, QuorumCertificate, Replica, ReplicaId, Request, StateChunk, Status, ValidatorSet,
    ViewChange, verify_qc, verify_reply,
};
use pbft_host::driver::client_protocol::{self, ClientInput};
use pbft_host::framing;
use pbft_host::serve::ServeLimits;
use pbft_host::start::CLIENT_FRAME_OVERHEAD;
use pbft_host::wire::{ClientFrame, FrameKind, relay_digest};

/// Time each target gets under `cargo test` (override with BOLERO_RANDOM_TEST_TIME_MS).
const TEST_TIME: Duration = Duration::from_secs(8);

const VALIDATORS: usize = 4;

fn set() -> ValidatorSet {
    validator_set(VALIDATORS)
}

fn config() -> Config {
    let mut config = small_config();
    config.retained_batches = 8;
    config.max_future_per_peer = 8;
    config.max_pending_requests = 16;
    config.max_batch_ops = 4;
    config.max_clients = 8;
    // Gateway-attested requests by this key are valid inputs too.
    config.attesting_gateways = vec![client_key(9).public_key()];
    config
}

/// Valid messages of every kind, for the fuzzer to replay and mutate.
fn valid_messages() -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    for seq in 1..=6u64 {
        messages.push(Message::Request(request(seq)).encode());
        let batch = batch(&[seq]);
        messages.push(pre_prepare(0, (0, seq), &batch));
        for signer in 1..VALIDATORS {
            messages.push(Message::Vote(vote(signer, Phase::Prepare, (0, seq), &batch)).encode());
            messages.push(Message::Vote(vote(signer, Phase::Commit, (0, seq), &batch)).encode());
        }
        messages.push(Message::Committed(committed(seq, &batch)).encode());
        // A new primary's fetch of a re-proposed batch, and the answer.
        messages.push(
            Message::FetchBatches(pbft_core::FetchBatches {
                view: 1,
                wanted: vec![(seq, batch.digest(&chain()))],
            })
            .encode(),
        );
        messages.push(
            Message::Batch(pbft_core::BatchAt {
                seq,
                batch: batch.clone(),
            })
            .encode(),
        );
        messages.push(
            Message::Status(Status {
                epoch: 0,
                view: seq % 3,
                normal: seq % 2 == 0,
                stable: 0,
                executed: seq - 1,
                slots: vec![0, 1, 3],
            })
            .encode(),
        );
    }
    // Requests a listed gateway attested together, alone and proposed (seqs 7 and 8).
    let attested = pbft_core::attest(
        &chain(),
        &client_key(9),
        (0..3)
            .map(|i| (client_key(i).public_key(), 100, vec![i as u8; 8]))
            .collect(),
    );
    for request in &attested {
        messages.push(Message::Request(request.clone()).encode());
    }
    for (seq, requests) in [(7, attested.clone()), (8, attested[1..].to_vec())] {
        let batch = pbft_core::Batch::of(requests);
        messages.push(pre_prepare(0, (0, seq), &batch));
    }
    // View changes to view 1 from every validator, and the new view they make.
    let changes: Vec<ViewChange> = (0..VALIDATORS)
        .map(|signer| view_change(signer, 1, Vec::new()))
        .collect();
    for change in &changes {
        messages.push(Message::ViewChange(change.clone()).encode());
    }
    let new_view = new_view(1, 1, changes[1..].to_vec(), Vec::new());
    messages.push(Message::NewView(new_view).encode());
    // State transfer: requests, a manifest and a chunk (valid shapes, for mutation).
    for chunk in [None, Some(0), Some(3)] {
        messages.push(Message::FetchState(FetchState { seq: 2, chunk }).encode());
    }
    messages.push(
        Message::StateManifest(Manifest {
            seq: 2,
            app_root: pbft_core::Digest([3; 32]),
            app_len: 100,
            chunk_bytes: 64,
            clients: vec![0, 0],
            epoch: pbft_core::EpochState::default(),
        })
        .encode(),
    );
    messages.push(
        Message::StateChunk(StateChunk {
            seq: 2,
            index: 1,
            bytes: vec![9; 36],
            proof: pbft_core::InclusionProof {
                index: 1,
                count: 2,
                path: vec![pbft_core::Digest([4; 32])],
            },
        })
        .encode(),
    );
    messages
}

#[test]
fn decode_any_bytes() {
    check!().with_test_time(TEST_TIME).for_each(|bytes: &[u8]| {
        if let Ok(message) = Message::decode(bytes, 1 << 20) {
            let again = Message::decode(&message.encode(), 1 << 20);
            assert_eq!(
                again.as_ref(),
                Ok(&message),
                "decoding is stable under re-encoding"
            );
        }
    });
}

#[test]
fn replica_survives_any_input_sequence() {
    let pool = valid_messages();
    let senders: Vec<PublicKey> = (0..VALIDATORS)
        .map(key_of)
        .chain([PublicKey([9; 32]), client_key(0).public_key()])
        .collect();
    check!()
        .with_test_time(TEST_TIME)
        .with_type::<Vec<(u8, u8, u16, u8, Vec<u8>)>>()
        .for_each(|inputs| {
            let mut replicas: Vec<Replica> = (0..2)
                .map(|index| pbft_core::testing::replica(index, config()))
                .collect();
            for (step, (selector, index, position, flip, raw)) in inputs.iter().enumerate() {
                let from = &senders[*index as usize % senders.len()];
                let pick = &pool[*index as usize % pool.len()];
                let bytes = match selector % 3 {
                    0 => raw.clone(),
                    1 => pick.clone(),
                    _ => {
                        let mut mutated = pick.clone();
                        let at = *position as usize % mutated.len();
                        mutated[at] ^= flip.max(&1);
                        mutated
                    }
                };
                let now = step as u64;
                for replica in &mut replicas {
                    let _ = replica.handle_message(now, from, &bytes);
                    if selector % 7 == 0 {
                        replica.handle_timeout(now + 10);
                    }
                    while replica.poll_output().is_some() {}
                    assert!(replica.memory_footprint() <= replica.memory_bound());
                }
            }
        });
}

#[test]
fn client_survives_any_reply() {
    check!().with_test_time(TEST_TIME).for_each(|bytes: &[u8]| {
        let mut client = Client::new(chain(), client_key(5), set(), 1);
        client.request(0, b"op".to_vec());
        let _ = client.handle_reply(bytes);
    });
}

/// Gateway inputs, for the fuzzer to pick from: requests of two clients (one forged), and
/// validators' replies to them with the validator each comes from: true and false results,
/// views far apart, signature bytes zeroed, and replies handed in by another validator.
fn gateway_inputs() -> (Vec<Request>, Vec<(ReplicaId, Vec<u8>)>) {
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    for seq in 1..=4u64 {
        let mine = request(seq);
        let mut forged = Request::new(&chain(), &client_key(1), seq, b"op".to_vec());
        forged.signature = mine.signature;
        let answered = [
            (mine.client, seq, mine.digest(&chain()), &b"ok"[..]),
            (forged.client, seq, forged.digest(&chain()), &b"no"[..]),
        ];
        for signer in 0..=VALIDATORS {
            for index in 0..answered.len() {
                let view = (seq % 2) * 1_000;
                let reply = testing::reply(signer, (view, seq), &answered, index);
                let id = ReplicaId(signer as u16);
                let mut zeroed = reply.clone();
                zeroed.signature = pbft_core::Signature([0; 64]);
                let other = ReplicaId(((signer + 1) % VALIDATORS) as u16);
                replies.push((id, Message::Reply(zeroed).encode()));
                replies.push((other, Message::Reply(reply.clone()).encode()));
                replies.push((id, Message::Reply(reply).encode()));
            }
        }
        requests.extend([mine, forged]);
    }
    (requests, replies)
}

#[test]
fn gateway_survives_any_input_sequence() {
    let (requests, replies) = gateway_inputs();
    let clients = [client_key(0).public_key(), client_key(1).public_key()];
    check!()
        .with_test_time(TEST_TIME)
        .with_type::<Vec<(u8, u8, u8, Vec<u8>)>>()
        .for_each(|inputs| {
            let mut config = GatewayConfig::new(chain());
            config.max_sessions = 1;
            config.max_outstanding = 4;
            config.max_outstanding_per_client = 3;
            config.max_batch_ops = 2;
            config.client_burst = 5;
            config.request_timeout_ms = 2_000;
            let mut gateway = Gateway::new(config.clone(), set()).expect("a valid config");
            // Half the inputs run gateway-attested: unsigned requests, attested in batches.
            if inputs
                .first()
                .is_some_and(|(selector, ..)| selector % 2 == 1)
            {
                gateway = gateway.attesting(client_key(9));
            }
            let mut now = 0u64;
            for (selector, index, step, raw) in inputs {
                now += u64::from(*step);
                let client = &clients[*index as usize % clients.len()];
                match selector % 7 {
                    6 => {
                        let _ = gateway.submit_unsigned(now, client, u64::from(*step), raw.clone());
                    }
                    0 => {
                        let _ = gateway.open(now, *client);
                    }
                    1 => gateway.close(client),
                    2 => {
                        let request = requests[*index as usize % requests.len()].clone();
                        let _ = gateway.submit(now, client, request);
                    }
                    3 => {
                        let (from, reply) = &replies[*index as usize % replies.len()];
                        let _ = gateway.handle_reply(*from, reply);
                    }
                    4 => {
                        let from = ReplicaId(u16::from(*step) % 5);
                        let _ = gateway.handle_reply(from, raw);
                    }
                    _ => gateway.handle_timeout(now),
                }
                while let Some(output) = gateway.poll_output() {
                    // What an attesting gateway sends verifies at validators that list it.
                    if let GatewayOutput::Transmit { bytes, .. } = &output
                        && let Ok(Message::Request(request)) = Message::decode(bytes, 1 << 20)
                        && let Some(attestation) = &request.attestation
                    {
                        let leaf = request.digest(&chain());
                        let (signer, signed) = request.signed(&chain(), &leaf).expect("a path");
                        assert_eq!(attestation.gateway, client_key(9).public_key());
                        let key = signer.verifying_key().expect("a valid key");
                        assert!(key.verify(&signed, &request.signature).is_ok());
                    }
                    let GatewayOutput::Answered { replies, .. } = output else {
                        continue;
                    };
                    // What a client gets proves itself: f + 1 signers, one result.
                    assert_eq!(replies.len(), VALIDATORS / 3 + 1);
                    for reply in &replies {
                        assert_eq!(reply.result, replies[0].result);
                        assert!(verify_reply(&chain(), &set(), reply).is_ok());
                    }
                }
                assert!(gateway.sessions() <= config.max_sessions);
                assert!(gateway.outstanding() <= config.max_outstanding);
                assert!(gateway.queued() < config.max_batch_ops);
            }
        });
}

#[test]
fn certificate_checks_survive_any_certificate() {
    let set = set();
    check!().with_test_time(TEST_TIME).for_each(|bytes: &[u8]| {
        if let Ok(qc) = postcard::from_bytes::<QuorumCertificate>(bytes) {
            let _ = verify_qc(&chain(), &set, &qc);
        }
        if let Ok(evidence) = postcard::from_bytes::<pbft_core::Evidence>(bytes) {
            let _ = pbft_core::verify_evidence(&chain(), &set, &evidence);
        }
    });
}

/// Valid client frames of every kind, for the fuzzer to replay and mutate.
fn valid_client_frames() -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = (1..=6u64)
        .map(|seq| ClientFrame::Message(Message::Request(request(seq)).encode()).encode())
        .collect();
    let gateway = client_key(1).public_key();
    frames.push(ClientFrame::relay(&chain(), &client_key(0), &gateway).encode());
    frames.push(ClientFrame::Status.encode());
    frames.push(
        ClientFrame::Proof {
            seq: 1,
            request: request(1).digest(&chain()),
        }
        .encode(),
    );
    frames
}

/// One connection's end of the stream, as `serve` reads it: a decoder of frames of at most
/// `max` bytes. A stream whose framing breaks is closed; the peer then connects again.
struct Connection {
    max: usize,
    decoder: framing::Decoder,
}

impl Connection {
    fn new(max: usize) -> Connection {
        Connection {
            max,
            decoder: framing::Decoder::new(max),
        }
    }

    /// The frames `bytes` complete (none if they broke the framing: a new connection).
    fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let frames = match self.decoder.push(bytes) {
            Ok(frames) => frames,
            Err(framing::FrameError::TooLarge { len, max }) => {
                assert!(len > max && max == self.max);
                self.decoder = framing::Decoder::new(self.max);
                Vec::new()
            }
        };
        assert!(self.decoder.buffered() <= framing::PREFIX_LEN + self.max);
        frames
    }
}

/// What a node does with bytes from its connections, without sockets or threads: each
/// stream goes through the host's framing under the limits `serve` sets, a validator's
/// frames into the replica, a client's through the node's own reading of the client wire
/// ([`client_protocol::read`]) and its requests into the replica; the core's timer fires as
/// the driver fires it. Stream pieces arrive cut anywhere, framed or not.
#[test]
fn node_survives_any_stream_from_validators_and_clients() {
    let config = config();
    let limits = ServeLimits::new(&config, config.max_message_bytes + CLIENT_FRAME_OVERHEAD);
    let max_message = config.max_message_bytes;
    let messages = valid_messages();
    let client_frames = valid_client_frames();
    check!()
        .with_test_time(TEST_TIME)
        .with_type::<Vec<(u8, u8, u16, u8, u8, Vec<u8>)>>()
        .for_each(|pieces| {
            let mut replicas: Vec<Replica> = (0..2)
                .map(|index| pbft_core::testing::replica(index, config.clone()))
                .collect();
            // Validators 0..4 and one client connection.
            let mut validators: Vec<Connection> = (0..VALIDATORS)
                .map(|_| Connection::new(limits.frame))
                .collect();
            let mut client = Connection::new(limits.client_frame);
            let mut now = 1u64;
            for (selector, index, position, flip, tick, raw) in pieces {
                let to_client = selector & 1 == 1;
                let pool = match to_client {
                    true => &client_frames,
                    false => &messages,
                };
                let pick = &pool[*index as usize % pool.len()];
                // What the peer writes: raw bytes (framing or garbage), or a framed payload.
                let stream = match (selector >> 1) % 4 {
                    0 => raw.clone(),
                    1 => length_prefixed(raw),
                    2 => length_prefixed(pick),
                    _ => {
                        let mut mutated = pick.clone();
                        let at = *position as usize % mutated.len();
                        mutated[at] ^= flip.max(&1);
                        length_prefixed(&mutated)
                    }
                };
                // The transport delivers it in two reads, cut anywhere.
                let cut = *position as usize % (stream.len() + 1);
                let (first, second) = stream.split_at(cut);
                let connection = match to_client {
                    true => &mut client,
                    false => &mut validators[*index as usize % VALIDATORS],
                };
                let mut frames = connection.push(first);
                frames.extend(connection.push(second));
                now += u64::from(*tick) * 10;
                for frame in frames.iter().filter(|frame| !frame.is_empty()) {
                    for replica in &mut replicas {
                        match to_client {
                            false => {
                                let from = key_of(*index as usize % VALIDATORS);
                                let _ = replica.handle_message(now, &from, frame);
                            }
                            true => client_frame(replica, frame, max_message, now),
                        }
                    }
                }
                for replica in &mut replicas {
                    if replica.poll_timeout().is_some_and(|at| at <= now) {
                        replica.handle_timeout(now);
                    }
                    while replica.poll_output().is_some() {}
                    assert!(replica.memory_footprint() <= replica.memory_bound());
                }
            }
        });
}

/// `payload` with its length prefix, however long (a prefix above the limit is the point).
fn length_prefixed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// A client's frame, read as the node reads it: the kind the transport paces it by agrees
/// with what it decodes to, a request goes to the replica, a relay claim's signature is
/// checked.
fn client_frame(replica: &mut Replica, frame: &[u8], max_message: usize, now: u64) {
    let kind = ClientFrame::kind(frame);
    let Ok(input) = client_protocol::read(frame, max_message) else {
        return;
    };
    let expected = match &input {
        ClientInput::Request(_) => FrameKind::Request,
        ClientInput::Relay { .. } => FrameKind::Relay,
        ClientInput::Status | ClientInput::Proof { .. } | ClientInput::Epochs { .. } => {
            FrameKind::Query
        }
    };
    assert_eq!(kind, Some(expected), "paced as what it is");
    match input {
        ClientInput::Request(request) => {
            let _ = replica.submit(now, request);
        }
        ClientInput::Relay { client, signature } => {
            let digest = relay_digest(&chain(), &client_key(1).public_key());
            let _ = client
                .verifying_key()
                .and_then(|key| key.verify(&digest, &signature));
        }
        ClientInput::Status | ClientInput::Proof { .. } | ClientInput::Epochs { .. } => {}
    }
}
