//! Shared helpers for onionvpn's cross-crate integration tests (see `tests/`).
