//! The one-round-trip circuit handshake (docs/spec.md, "Circuit handshake").
