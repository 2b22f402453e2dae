//! Fuzz targets live in `tests/`: `cargo test -p pbft-fuzz` runs them on random inputs for a
//! bounded time, `cargo +nightly bolero test -p pbft-fuzz <name>` runs one
//! coverage-guided (see the README's Fuzzing section).

// `cargo bolero test <name>` builds this library's (empty) test binary too, instrumented for
// coverage: it links only if the engine that defines the coverage hooks is linked into it.
#[cfg(test)]
use bolero as _;
