//! What compressing a pre-prepare saves and costs: LZ4 (lz4_flex) and zstd at levels 1 and 3,
//! on batches of 256 signed 128-byte puts from 64 clients with three kinds of payload. Prints
//! the size ratio, compression and decompression speed, and the link bandwidth below which
//! compressing pays: sending a frame of `s` bytes over a link of bandwidth `B` takes `s / B`;
//! compressed it takes `s·r / B` plus `s / C` to compress and `s / D` to decompress, so it
//! pays while `B < (1 − r) / (1/C + 1/D)`.
//!
//! `cargo bench -p pbft-benches --bench compression`

use std::hint::black_box;
use std::time::Instant;

use pbft_core::testing::{chain, client_key, pre_prepare};
use pbft_core::{Batch, Hasher, Keypair, Request};
use pbft_host::kv::Op;

const REQUESTS: usize = 256;
const CLIENTS: usize = 64;
const OP_BYTES: usize = 128;

/// Makes a put's value from (client, request number, length).
type Value = dyn Fn(usize, u64, usize) -> Vec<u8>;
/// A compressor or a decompressor.
type Codec = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// A put of `OP_BYTES` in all whose value `value` makes from the request's number.
fn put(client: usize, n: u64, value: &Value) -> Vec<u8> {
    let key = format!("k-{client}-{n}").into_bytes();
    let len = OP_BYTES.saturating_sub(key.len() + 4);
    Op::Put {
        key,
        value: value(client, n, len),
    }
    .encode()
}

/// What `pbft bench` writes: one byte repeated.
fn repeated(_: usize, _: u64, len: usize) -> Vec<u8> {
    vec![b'v'; len]
}

/// Bytes no compressor can shrink (hashes of the request's number).
fn random(client: usize, n: u64, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    let mut block = 0u64;
    while bytes.len() < len {
        let digest = Hasher::new(b"bench/random")
            .u64(client as u64)
            .u64(n)
            .u64(block)
            .finish();
        bytes.extend_from_slice(&digest.0);
        block += 1;
    }
    bytes.truncate(len);
    bytes
}

/// An application's record: a JSON transfer between accounts, numbers varying per request.
fn json(client: usize, n: u64, len: usize) -> Vec<u8> {
    let h = Hasher::new(b"bench/json")
        .u64(client as u64)
        .u64(n)
        .finish()
        .0;
    let number = |i: usize| u64::from(h[i]) * 256 + u64::from(h[i + 1]);
    let mut record = format!(
        r#"{{"from":"acct-{:07}","to":"acct-{:07}","amount":{}.{:02},"currency":"EUR","ts":{}}}"#,
        number(0) * 13,
        number(2) * 7,
        number(4),
        h[6] % 100,
        1_764_547_200_000 + n * 37 + client as u64,
    )
    .into_bytes();
    record.resize(len, b' ');
    record
}

/// One pre-prepare's encoding: `REQUESTS` signed puts whose values `value` makes.
fn batch(value: &Value) -> Vec<u8> {
    let clients: Vec<Keypair> = (0..CLIENTS).map(client_key).collect();
    let requests = (0..REQUESTS)
        .map(|i| {
            let (client, n) = (i % CLIENTS, (i / CLIENTS) as u64 + 1);
            Request::new(&chain(), &clients[client], n, put(client, n, value))
        })
        .collect();
    pre_prepare(0, (0, 1), &Batch::of(requests))
}

/// Megabytes per second of raw input `f` handles, over at least 0.3 s of repetitions.
fn speed(raw: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < 0.3 {
        f();
        rounds += 1;
    }
    (raw as f64 * rounds as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    println!(
        "{:<28} {:>8} {:>7} {:>13} {:>15} {:>22}",
        "payload, codec",
        "bytes",
        "ratio",
        "compress MB/s",
        "decompress MB/s",
        "pays below (Mbit/s)"
    );
    let payloads: [(&str, &Value); 3] = [
        ("pbft bench puts", &repeated),
        ("JSON records", &json),
        ("random values", &random),
    ];
    for (name, value) in payloads {
        let raw = batch(value);
        let codecs: [(&str, Codec, Codec); 3] = [
            (
                "lz4",
                Box::new(lz4_flex::compress_prepend_size),
                Box::new(|c: &[u8]| lz4_flex::decompress_size_prepended(c).expect("lz4")),
            ),
            (
                "zstd 1",
                Box::new(|r: &[u8]| zstd::bulk::compress(r, 1).expect("zstd")),
                Box::new(|c: &[u8]| zstd::bulk::decompress(c, 1 << 24).expect("zstd")),
            ),
            (
                "zstd 3",
                Box::new(|r: &[u8]| zstd::bulk::compress(r, 3).expect("zstd")),
                Box::new(|c: &[u8]| zstd::bulk::decompress(c, 1 << 24).expect("zstd")),
            ),
        ];
        for (codec, compress, decompress) in &codecs {
            let packed = compress(&raw);
            assert_eq!(decompress(&packed), raw, "{codec} round-trips");
            let ratio = packed.len() as f64 / raw.len() as f64;
            let c = speed(raw.len(), || {
                black_box(compress(black_box(&raw)));
            });
            let d = speed(raw.len(), || {
                black_box(decompress(black_box(&packed)));
            });
            // Bytes per second of link below which compressing saves time, in Mbit/s.
            let pays = (1.0 - ratio) / (1.0 / c + 1.0 / d) * 8.0;
            println!(
                "{:<28} {:>8} {:>7.3} {:>13.0} {:>15.0} {:>22.0}",
                format!("{name}, {codec}"),
                raw.len(),
                ratio,
                c,
                d,
                pays.max(0.0)
            );
        }
    }
}
