//! Fuzz targets live in `tests/`: `cargo test -p pbft-fuzz` runs them on random inputs for a
//! bounded time, `cargo bolero test -p pbft-fuzz --test targets <name>` runs one
//! coverage-guided.
