//! Layered relay crypto: one layer per hop and direction (docs/spec.md, "Relay crypto").
