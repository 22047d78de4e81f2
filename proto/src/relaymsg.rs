//! Relay messages: what travels, encrypted, inside RELAY cells (docs/spec.md, "Relay messages").
