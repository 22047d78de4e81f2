//! Extension messages carried, encrypted, in the circuit handshake (docs/spec.md, "Extensions").
