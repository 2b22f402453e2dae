//! Benchmarks live in `benches/`: `cargo bench -p pbft-benches`.
