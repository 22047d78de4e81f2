//! The link: a Noise NK handshake and the framed, encrypted cell stream after it (docs/spec.md, "Links").
