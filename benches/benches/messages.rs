//! Per-message costs: encode, decode, digest, sign, verify (single and batched).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pbft_benches::{batch_of, signed_by_distinct_keys};
use pbft_core::testing::{chain, client_key, round_robin_request, vote};
use pbft_core::{
    Batch, BatchVerifier, CheckPool, Client, Config, Keypair, Message, Phase, PrePrepare,
    ReplyCache, Request,
};
use pbft_host::checks::ThreadChecks;
use pbft_sim::cluster::Cluster;

/// `count` requests of 128 bytes, each from another client.
fn requests(count: usize) -> Vec<Request> {
    let clients: Vec<Keypair> = (0..count).map(client_key).collect();
    (0..count as u64)
        .map(|i| round_robin_request(&clients, i, 128))
        .collect()
}

fn samples() -> Vec<(&'static str, Message)> {
    let batch = Batch::of(requests(100));
    let proposal = vote(0, Phase::PrePrepare, (0, 1), &batch);
    let commit = vote(0, Phase::Commit, (0, 1), &batch);
    vec![
        ("request-128B", Message::Request(requests(1).remove(0))),
        (
            "pre-prepare-100x128B",
            Message::PrePrepare(PrePrepare {
                vote: proposal,
                batch,
            }),
        ),
        ("commit", Message::Vote(commit)),
    ]
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (name, message) in samples() {
        let bytes = message.encode();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("encode/{name}"), |b| b.iter(|| message.encode()));
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| Message::decode(&bytes, 1 << 22))
        });
    }
    group.finish();
}

fn digests(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest");
    let request = requests(1).remove(0);
    group.bench_function("request-128B", |b| b.iter(|| request.digest(&chain())));
    for size in [10, 100, 1000] {
        let batch = Batch::of(requests(size));
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("batch-merkle-root/{size}"), |b| {
            b.iter(|| batch.digest(&chain()))
        });
    }
    group.finish();
}

fn signatures(c: &mut Criterion) {
    // Named by the curve backend this build runs, so that runs on each backend (the default
    // build, and one with RUSTFLAGS='--cfg curve25519_dalek_backend="simd"' for AVX2) sit side
    // by side in criterion's report.
    let mut group = c.benchmark_group(format!("signature-{}", pbft_core::curve_backend()));
    let key = Keypair::from_seed(&[3; 32]);
    let digest = pbft_core::Hasher::new(b"bench").finish();
    let signature = key.sign(&digest);
    group.bench_function("sign", |b| b.iter(|| key.sign(&digest)));
    group.bench_function("verify", |b| {
        b.iter(|| key.verifying_key().verify(&digest, &signature))
    });
    group.bench_function("check-client-key", |b| {
        b.iter(|| key.public_key().verifying_key())
    });
    for size in [4, 64, 256] {
        let signed = signed_by_distinct_keys(size, &digest);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("verify-batch/{size}"), |b| {
            b.iter_batched(
                || batch_of(&signed, &digest),
                BatchVerifier::verify,
                BatchSize::SmallInput,
            )
        });
    }
    // A batch of 256 cut into one piece per thread, as a replica with a host's thread pool
    // checks a pre-prepare ([`pbft_core::CheckPool`]).
    let signed = signed_by_distinct_keys(256, &digest);
    group.throughput(Throughput::Elements(256));
    for threads in [1, 2] {
        let checks = ThreadChecks::new(threads).expect("the system starts threads");
        let pieces = signed.len().div_ceil(threads);
        group.bench_function(format!("verify-batch-on-threads/256/{threads}"), |b| {
            b.iter_batched(
                || {
                    let chunks = signed.chunks(pieces);
                    chunks.map(|chunk| batch_of(chunk, &digest)).collect()
                },
                |pieces| assert!(checks.verify_all(pieces).iter().all(Result::is_ok)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A client taking its f + 1 replies for a request in a batch of 1,023 (a 10-deep Merkle
/// path each), with the validators' signed roots already in its reply cache, as a client
/// behind a gateway or the bench's clients have them: the cost left is decoding and hashing.
fn replies(c: &mut Criterion) {
    let mut config = Config::new(pbft_sim::chain());
    config.max_batch_ops = 1024;
    let mut cluster = Cluster::new(4, config);
    let mut clients: Vec<Client> = (0..1024)
        .map(|i| Client::new(pbft_sim::chain(), client_key(i), cluster.set.clone(), 1))
        .collect();
    let requests: Vec<Request> = clients
        .iter_mut()
        .map(|client| client.request(0, vec![7; 128]))
        .collect();
    for request in &requests {
        cluster
            .submit(0, request.clone())
            .expect("the primary takes it");
    }
    cluster.run();
    // The first request went alone (the primary was idle); the rest make one batch.
    let replies = cluster.take_replies(&requests[1].client);
    let client = &mut clients[1];
    let mut cache = ReplyCache::new(64);
    let take = |client: &mut Client, cache: &mut ReplyCache| {
        client.track(0, requests[1].clone());
        let first = client.handle_reply_cached(&replies[0], cache);
        let second = client.handle_reply_cached(&replies[1], cache);
        assert!(first == Ok(None) && matches!(second, Ok(Some(_))));
    };
    take(client, &mut cache);
    let mut group = c.benchmark_group("client");
    group.bench_function("f-plus-one-replies-batch-1023", |b| {
        b.iter(|| take(client, &mut cache))
    });
    group.finish();
}

criterion_group!(benches, codec, digests, signatures, replies);
criterion_main!(benches);
