//! Sizes and bounds fixed by the protocol (docs/spec.md, "Cells").
//!
//! Every link carries cells of exactly [`CELL_LEN`] bytes, whatever they hold, so that
//! size reveals nothing about content, command or a hop's position.

/// Length of every cell on a link: circuit id, command and body.
///
/// 512 bytes: a power of two (cells pack evenly into batches and buffers), close to
/// Tor's 514 so that Tor's traffic-analysis results carry over, and large enough for a
/// circuit handshake with a 256-byte extension message in one cell.
pub const CELL_LEN: usize = 512;
/// Length of the circuit id at the start of a cell.
pub const CIRC_ID_LEN: usize = 4;
/// Length of the command byte after the circuit id.
pub const CELL_CMD_LEN: usize = 1;
/// Length of a cell's body: everything after circuit id and command.
pub const CELL_BODY_LEN: usize = CELL_LEN - CIRC_ID_LEN - CELL_CMD_LEN; // 507

/// Length of the chained tag `T` at the start of a RELAY cell's body.
pub const RELAY_TAG_LEN: usize = 16;
/// Length of the encrypted part `C` of a RELAY cell's body: the relay message area.
pub const RELAY_PAYLOAD_LEN: usize = CELL_BODY_LEN - RELAY_TAG_LEN; // 491

/// Length of a relay message header: command (1), stream id (2), length (2).
pub const RELAY_HEADER_LEN: usize = 5;
/// Most bytes of a relay message body that fit in one cell.
pub const RELAY_BODY_MAX: usize = RELAY_PAYLOAD_LEN - RELAY_HEADER_LEN; // 486

/// Most hops a circuit may have. Relays refuse a circuit whose client sends more than
/// this many RELAY_EARLY cells (Tor's bound), which also bounds circuit length.
pub const MAX_HOPS: usize = 8;

/// Largest extension message either side of a circuit handshake may send.
pub const MAX_EXTENSION_LEN: usize = 256;
