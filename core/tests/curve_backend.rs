//! Which curve25519-dalek backend a build runs (see `pbft_core::curve_backend`): CI runs the
//! signature rule's tests on each backend it builds and checks here that it got that one.

/// With `PBFT_EXPECT_CURVE_BACKEND` set (CI does, for the AVX2 build), the backend must be
/// that one; otherwise it must be what the standard library's own CPU detection implies for
/// the backends this workspace builds (IFMA where the CPU has it, else AVX2).
#[test]
fn crypto_runs_on_the_curve_backend_asked_for() {
    let backend = pbft_core::curve_backend().to_string();
    eprintln!("curve backend: {backend}");
    let expected = std::env::var("PBFT_EXPECT_CURVE_BACKEND").unwrap_or_else(|_| implied());
    assert_eq!(backend, expected);
}

#[cfg(target_arch = "x86_64")]
fn implied() -> String {
    let ifma = std::arch::is_x86_feature_detected!("avx512ifma")
        && std::arch::is_x86_feature_detected!("avx512vl");
    match (ifma, std::arch::is_x86_feature_detected!("avx2")) {
        (true, _) => "avx512ifma",
        (false, true) => "avx2",
        (false, false) => "portable",
    }
    .to_string()
}

#[cfg(not(target_arch = "x86_64"))]
fn implied() -> String {
    "portable".to_string()
}
