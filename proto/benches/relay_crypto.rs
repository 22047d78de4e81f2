#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Relay crypto benchmarks (placeholder, filled in below).
fn main() {}
