//! Cryptography of circuits: the circuit handshake and layered relay crypto.

pub mod handshake;
pub mod layer;
