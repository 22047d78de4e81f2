//! Fixed-size cells: the unit every link carries (docs/spec.md, "Cells").
//!
//! A cell is exactly [`CELL_LEN`] bytes: `CircId (4, BE) || Command (1) || Body (507)`.
//! [`Cell`] owns those bytes and gives typed, in-place access to them; nothing here
//! allocates. The bodies of CREATE, CREATED and DESTROY have typed views
//! ([`Create`], [`Created`], [`Destroy`]); RELAY and RELAY_EARLY bodies belong to the relay
//! crypto and then to [`crate::relaymsg`].

use std::fmt;
use std::num::NonZeroU32;

use thiserror::Error;

use crate::consts::{CELL_BODY_LEN, CELL_CMD_LEN, CELL_LEN, CIRC_ID_LEN};

/// Most bytes of handshake data a CREATE body can carry (after HTYPE and HLEN).
pub const CREATE_HDATA_MAX: usize = CELL_BODY_LEN - 4; // 503
/// Most bytes of handshake data a CREATED body can carry (after HLEN).
pub const CREATED_HDATA_MAX: usize = CELL_BODY_LEN - 2; // 505

/// Errors from parsing or building cells and their bodies.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CellError {
    /// The command byte is not one of [`ChanCmd`]; the link is closed for it.
    #[error("unknown cell command {0}")]
    UnknownCommand(u8),
    /// A PADDING cell carried a non-zero circuit id.
    #[error("PADDING cell with circuit id {0:#010x} (must be 0)")]
    PaddingWithCircId(u32),
    /// A circuit-level cell carried circuit id 0, which is reserved for link-level cells.
    #[error("{0:?} cell with circuit id 0 (reserved for link-level cells)")]
    ZeroCircId(ChanCmd),
    /// A typed body was requested from a cell with another command.
    #[error("expected a {expected:?} cell, got {got:?}")]
    WrongCommand {
        /// The command the caller asked for.
        expected: ChanCmd,
        /// The command the cell has.
        got: ChanCmd,
    },
    /// A CREATE body names a handshake type this implementation does not know.
    #[error("unknown handshake type {0}")]
    UnknownHandshakeType(u16),
    /// HLEN in a CREATE or CREATED body reaches beyond the body.
    #[error("handshake length {hlen} exceeds the {max} bytes available in the body")]
    HandshakeTooLong {
        /// The HLEN field (or the length of the data to encode).
        hlen: usize,
        /// The most handshake bytes the body can hold.
        max: usize,
    },
    /// A DESTROY body carries a reason code not in [`DestroyReason`]. The circuit is torn
    /// down all the same.
    #[error("unknown DESTROY reason {0}")]
    UnknownDestroyReason(u8),
}

/// Which end of a link chose a circuit id.
///
/// The side that opened the TCP connection is the *initiator*; the side that accepted it
/// is the *responder*. Ids chosen by the initiator have the most significant bit set, ids
/// chosen by the responder have it clear, so both ends can create circuits on one link
/// without colliding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkSide {
    /// The side that opened the TCP connection.
    Initiator,
    /// The side that accepted the TCP connection.
    Responder,
}

/// A circuit id on one link: never 0 (id 0 is reserved for link-level cells).
///
/// Circuit ids are local to a link; a relay forwarding a cell to the next link rewrites it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircId(NonZeroU32);

impl CircId {
    /// The bit that tells who chose the id: set for the link initiator, clear for the
    /// responder.
    pub const INITIATOR_BIT: u32 = 0x8000_0000;

    /// Wraps a raw id; `None` for 0.
    pub const fn new(raw: u32) -> Option<CircId> {
        match NonZeroU32::new(raw) {
            Some(n) => Some(CircId(n)),
            None => None,
        }
    }

    /// Builds an id for a circuit that `side` creates, from random bits (for example a
    /// `u32` from the caller's RNG): the most significant bit is forced to match `side`.
    ///
    /// Returns `None` when the result would be 0 (the responder drew `0` or
    /// `0x8000_0000`); the caller draws again. It also must draw again when the id is
    /// already in use on the link.
    pub const fn from_random(random: u32, side: LinkSide) -> Option<CircId> {
        let raw = match side {
            LinkSide::Initiator => random | Self::INITIATOR_BIT,
            LinkSide::Responder => random & !Self::INITIATOR_BIT,
        };
        CircId::new(raw)
    }

    /// The raw value as it appears on the wire.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Which side of the link chose this id (and so created the circuit).
    pub const fn chosen_by(self) -> LinkSide {
        if self.0.get() & Self::INITIATOR_BIT != 0 {
            LinkSide::Initiator
        } else {
            LinkSide::Responder
        }
    }

    /// Whether a CREATE with this id may arrive from the peer when the local end of the
    /// link is `local`: the peer must have chosen it, so its bit must be the peer's.
    pub fn may_be_created_by_peer_of(self, local: LinkSide) -> bool {
        self.chosen_by() != local
    }
}

impl fmt::Debug for CircId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CircId({:#010x})", self.get())
    }
}

impl fmt::Display for CircId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.get())
    }
}

/// A cell command (the byte after the circuit id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChanCmd {
    /// Link-level padding (circuit id 0, body zeros); discarded by the receiver.
    Padding = 0,
    /// Opens a circuit: carries the client's handshake message ([`Create`]).
    Create = 1,
    /// Answers CREATE: carries the relay's handshake message ([`Created`]).
    Created = 2,
    /// Carries an encrypted relay message.
    Relay = 3,
    /// Like RELAY; the only command that may carry EXTEND. Bounded per circuit.
    RelayEarly = 4,
    /// Tears a circuit down ([`Destroy`]).
    Destroy = 5,
}

impl ChanCmd {
    /// Whether cells with this command belong to a circuit (non-zero circuit id).
    pub const fn is_circuit_level(self) -> bool {
        !matches!(self, ChanCmd::Padding)
    }
}

impl TryFrom<u8> for ChanCmd {
    type Error = CellError;

    fn try_from(v: u8) -> Result<Self, CellError> {
        Ok(match v {
            0 => ChanCmd::Padding,
            1 => ChanCmd::Create,
            2 => ChanCmd::Created,
            3 => ChanCmd::Relay,
            4 => ChanCmd::RelayEarly,
            5 => ChanCmd::Destroy,
            other => return Err(CellError::UnknownCommand(other)),
        })
    }
}

/// One cell, owning its [`CELL_LEN`] bytes; all access is in place.
///
/// A `Cell` always holds a valid header: a known command, circuit id 0 exactly for
/// PADDING. Its body is unconstrained until read through a typed view.
#[derive(Clone, PartialEq, Eq)]
pub struct Cell {
    bytes: [u8; CELL_LEN],
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body is ciphertext or handshake material: never print it.
        f.debug_struct("Cell")
            .field("circ_id", &self.circ_id())
            .field("cmd", &self.cmd())
            .finish_non_exhaustive()
    }
}

impl Cell {
    /// A link-level PADDING cell: circuit id 0, zero body.
    pub const fn padding() -> Cell {
        Cell {
            bytes: [0; CELL_LEN],
        }
    }

    /// A circuit-level cell with a zero body.
    ///
    /// `cmd` must not be [`ChanCmd::Padding`] (which has no circuit id): use
    /// [`Cell::padding`]. Asking for it anyway yields a PADDING cell with id 0.
    pub fn new(circ_id: CircId, cmd: ChanCmd) -> Cell {
        let mut cell = Cell::padding();
        if cmd.is_circuit_level() {
            cell.set_header(circ_id, cmd);
        }
        cell
    }

    /// A circuit-level cell whose body is copied from `body`.
    pub fn with_body(circ_id: CircId, cmd: ChanCmd, body: &[u8; CELL_BODY_LEN]) -> Cell {
        let mut cell = Cell::new(circ_id, cmd);
        cell.body_mut().copy_from_slice(body);
        cell
    }

    /// Parses (and copies) a cell received on a link, checking its header.
    pub fn parse(bytes: &[u8; CELL_LEN]) -> Result<Cell, CellError> {
        Cell::from_bytes(*bytes)
    }

    /// Takes ownership of received bytes, checking the header; no copy.
    pub fn from_bytes(bytes: [u8; CELL_LEN]) -> Result<Cell, CellError> {
        let [c0, c1, c2, c3, cmd, ..] = bytes;
        let raw_id = u32::from_be_bytes([c0, c1, c2, c3]);
        let cmd = ChanCmd::try_from(cmd)?;
        match (cmd, raw_id) {
            (ChanCmd::Padding, 0) => {}
            (ChanCmd::Padding, id) => return Err(CellError::PaddingWithCircId(id)),
            (cmd, 0) => return Err(CellError::ZeroCircId(cmd)),
            _ => {}
        }
        Ok(Cell { bytes })
    }

    /// The circuit id; `None` for PADDING (id 0).
    pub fn circ_id(&self) -> Option<CircId> {
        let [c0, c1, c2, c3, ..] = self.bytes;
        CircId::new(u32::from_be_bytes([c0, c1, c2, c3]))
    }

    /// The command.
    pub fn cmd(&self) -> ChanCmd {
        // The header was validated on construction; every setter keeps it valid.
        ChanCmd::try_from(self.bytes[CIRC_ID_LEN]).unwrap_or(ChanCmd::Padding)
    }

    /// The body (everything after the header).
    pub fn body(&self) -> &[u8; CELL_BODY_LEN] {
        let [_, _, _, _, _, body @ ..] = &self.bytes;
        body
    }

    /// The body, writable in place (for encryption and for encoding messages).
    pub fn body_mut(&mut self) -> &mut [u8; CELL_BODY_LEN] {
        let [_, _, _, _, _, body @ ..] = &mut self.bytes;
        body
    }

    /// The whole cell as it goes on the link.
    pub fn as_bytes(&self) -> &[u8; CELL_LEN] {
        &self.bytes
    }

    /// Gives the bytes back (for example to a link's send buffer).
    pub fn into_bytes(self) -> [u8; CELL_LEN] {
        self.bytes
    }

    /// Rewrites the circuit id (a relay does this when forwarding to the next link).
    /// PADDING cells have no circuit id and are left unchanged.
    pub fn set_circ_id(&mut self, circ_id: CircId) {
        if self.cmd().is_circuit_level() {
            self.bytes[..CIRC_ID_LEN].copy_from_slice(&circ_id.get().to_be_bytes());
        }
    }

    /// Changes the command between circuit-level commands (for example RELAY_EARLY to
    /// RELAY). A PADDING cell, or a request to make this cell PADDING, is ignored and
    /// returns `false`, since that would change whether it has a circuit id.
    pub fn set_cmd(&mut self, cmd: ChanCmd) -> bool {
        if !cmd.is_circuit_level() || !self.cmd().is_circuit_level() {
            return false;
        }
        self.bytes[CIRC_ID_LEN] = cmd as u8;
        true
    }

    fn set_header(&mut self, circ_id: CircId, cmd: ChanCmd) {
        self.bytes[..CIRC_ID_LEN].copy_from_slice(&circ_id.get().to_be_bytes());
        self.bytes[CIRC_ID_LEN + CELL_CMD_LEN - 1] = cmd as u8;
    }

    /// A CREATE cell carrying `create`.
    pub fn create(circ_id: CircId, create: &Create<'_>) -> Result<Cell, CellError> {
        let mut cell = Cell::new(circ_id, ChanCmd::Create);
        create.encode_into(cell.body_mut())?;
        Ok(cell)
    }

    /// A CREATED cell carrying `created`.
    pub fn created(circ_id: CircId, created: &Created<'_>) -> Result<Cell, CellError> {
        let mut cell = Cell::new(circ_id, ChanCmd::Created);
        created.encode_into(cell.body_mut())?;
        Ok(cell)
    }

    /// A DESTROY cell with `reason`.
    pub fn destroy(circ_id: CircId, reason: DestroyReason) -> Cell {
        let mut cell = Cell::new(circ_id, ChanCmd::Destroy);
        Destroy { reason }.encode_into(cell.body_mut());
        cell
    }

    /// The CREATE body of this cell.
    pub fn as_create(&self) -> Result<Create<'_>, CellError> {
        self.expect_cmd(ChanCmd::Create)?;
        Create::parse(self.body())
    }

    /// The CREATED body of this cell.
    pub fn as_created(&self) -> Result<Created<'_>, CellError> {
        self.expect_cmd(ChanCmd::Created)?;
        Created::parse(self.body())
    }

    /// The DESTROY body of this cell.
    pub fn as_destroy(&self) -> Result<Destroy, CellError> {
        self.expect_cmd(ChanCmd::Destroy)?;
        Destroy::parse(self.body())
    }

    fn expect_cmd(&self, expected: ChanCmd) -> Result<(), CellError> {
        let got = self.cmd();
        if got == expected {
            Ok(())
        } else {
            Err(CellError::WrongCommand { expected, got })
        }
    }
}

/// The type of a circuit handshake (HTYPE in CREATE and EXTEND).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum HandshakeType {
    /// `onionvpn-ntor3-v1` (docs/spec.md, "Circuit handshake").
    Ntor3V1 = 1,
}

impl TryFrom<u16> for HandshakeType {
    type Error = CellError;

    fn try_from(v: u16) -> Result<Self, CellError> {
        match v {
            1 => Ok(HandshakeType::Ntor3V1),
            other => Err(CellError::UnknownHandshakeType(other)),
        }
    }
}

/// The body of a CREATE cell: `HTYPE u16 || HLEN u16 || HDATA || zeros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Create<'a> {
    /// Which handshake `hdata` belongs to.
    pub htype: HandshakeType,
    /// The client's handshake message (at most [`CREATE_HDATA_MAX`] bytes).
    pub hdata: &'a [u8],
}

impl<'a> Create<'a> {
    /// Parses a CREATE body.
    pub fn parse(body: &'a [u8; CELL_BODY_LEN]) -> Result<Create<'a>, CellError> {
        let [t0, t1, l0, l1, rest @ ..] = body;
        let htype = HandshakeType::try_from(u16::from_be_bytes([*t0, *t1]))?;
        let hdata = hlen_slice(u16::from_be_bytes([*l0, *l1]), rest)?;
        Ok(Create { htype, hdata })
    }

    /// Writes this CREATE into `body`, zero-filling the rest.
    pub fn encode_into(&self, body: &mut [u8; CELL_BODY_LEN]) -> Result<(), CellError> {
        let [t0, t1, l0, l1, rest @ ..] = body;
        let hlen = checked_hlen(self.hdata.len(), CREATE_HDATA_MAX)?;
        [*t0, *t1] = (self.htype as u16).to_be_bytes();
        [*l0, *l1] = hlen.to_be_bytes();
        write_zero_padded(rest, self.hdata);
        Ok(())
    }
}

/// The body of a CREATED cell: `HLEN u16 || HDATA || zeros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created<'a> {
    /// The relay's handshake message (at most [`CREATED_HDATA_MAX`] bytes).
    pub hdata: &'a [u8],
}

impl<'a> Created<'a> {
    /// Parses a CREATED body.
    pub fn parse(body: &'a [u8; CELL_BODY_LEN]) -> Result<Created<'a>, CellError> {
        let [l0, l1, rest @ ..] = body;
        let hdata = hlen_slice(u16::from_be_bytes([*l0, *l1]), rest)?;
        Ok(Created { hdata })
    }

    /// Writes this CREATED into `body`, zero-filling the rest.
    pub fn encode_into(&self, body: &mut [u8; CELL_BODY_LEN]) -> Result<(), CellError> {
        let [l0, l1, rest @ ..] = body;
        let hlen = checked_hlen(self.hdata.len(), CREATED_HDATA_MAX)?;
        [*l0, *l1] = hlen.to_be_bytes();
        write_zero_padded(rest, self.hdata);
        Ok(())
    }
}

fn hlen_slice(hlen: u16, rest: &[u8]) -> Result<&[u8], CellError> {
    let hlen = usize::from(hlen);
    rest.get(..hlen).ok_or(CellError::HandshakeTooLong {
        hlen,
        max: rest.len(),
    })
}

fn checked_hlen(len: usize, max: usize) -> Result<u16, CellError> {
    if len > max {
        return Err(CellError::HandshakeTooLong { hlen: len, max });
    }
    u16::try_from(len).map_err(|_| CellError::HandshakeTooLong { hlen: len, max })
}

/// Copies `data` to the start of `dst` and zeroes the rest; `data` must fit (checked by
/// the callers, and harmless otherwise: nothing is written past `dst`).
fn write_zero_padded(dst: &mut [u8], data: &[u8]) {
    let n = data.len().min(dst.len());
    let (head, tail) = dst.split_at_mut(n);
    head.copy_from_slice(&data[..n]);
    tail.fill(0);
}

/// Why a circuit was torn down (the first byte of a DESTROY body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DestroyReason {
    /// No reason given.
    None = 0,
    /// The peer violated the protocol.
    Protocol = 1,
    /// An internal error in the sender.
    Internal = 2,
    /// The client asked for the teardown.
    Requested = 3,
    /// The relay is hibernating and accepts no circuits.
    Hibernating = 4,
    /// Out of memory, sockets or circuit ids.
    ResourceLimit = 5,
    /// Connecting to the next relay (for EXTEND) failed.
    ConnectFailed = 6,
    /// The handshake named an onion key the relay does not hold (any more).
    OnionKeyUnknown = 7,
    /// The circuit finished normally.
    Finished = 8,
    /// The circuit (or its handshake) timed out.
    Timeout = 9,
    /// Another part of the circuit was destroyed.
    Destroyed = 10,
    /// Usage ran past what was paid plus the grace allowance.
    PaymentRequired = 11,
    /// The client's price offer is below the relay's current price.
    PriceTooLow = 12,
    /// Too many hops (RELAY_EARLY cells) on this circuit.
    TooManyHops = 13,
}

impl TryFrom<u8> for DestroyReason {
    type Error = CellError;

    fn try_from(v: u8) -> Result<Self, CellError> {
        use DestroyReason::*;
        Ok(match v {
            0 => None,
            1 => Protocol,
            2 => Internal,
            3 => Requested,
            4 => Hibernating,
            5 => ResourceLimit,
            6 => ConnectFailed,
            7 => OnionKeyUnknown,
            8 => Finished,
            9 => Timeout,
            10 => Destroyed,
            11 => PaymentRequired,
            12 => PriceTooLow,
            13 => TooManyHops,
            other => return Err(CellError::UnknownDestroyReason(other)),
        })
    }
}

/// The body of a DESTROY cell: `reason u8 || zeros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destroy {
    /// Why the circuit is torn down.
    pub reason: DestroyReason,
}

impl Destroy {
    /// Parses a DESTROY body. An unknown reason is an error, but the receiver tears the
    /// circuit down all the same.
    pub fn parse(body: &[u8; CELL_BODY_LEN]) -> Result<Destroy, CellError> {
        let [reason, ..] = body;
        Ok(Destroy {
            reason: DestroyReason::try_from(*reason)?,
        })
    }

    /// Writes this DESTROY into `body`, zero-filling the rest.
    pub fn encode_into(&self, body: &mut [u8; CELL_BODY_LEN]) {
        let [reason, rest @ ..] = body;
        *reason = self.reason as u8;
        rest.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circ_id_bits_follow_the_creating_side() {
        let i = CircId::from_random(0x1234, LinkSide::Initiator).unwrap();
        assert_eq!(i.get(), 0x8000_1234);
        assert_eq!(i.chosen_by(), LinkSide::Initiator);
        assert!(i.may_be_created_by_peer_of(LinkSide::Responder));
        assert!(!i.may_be_created_by_peer_of(LinkSide::Initiator));
        let r = CircId::from_random(0xffff_ffff, LinkSide::Responder).unwrap();
        assert_eq!(r.get(), 0x7fff_ffff);
        assert_eq!(r.chosen_by(), LinkSide::Responder);
        assert_eq!(CircId::from_random(0x8000_0000, LinkSide::Responder), None);
        assert_eq!(CircId::from_random(0, LinkSide::Responder), None);
        assert!(CircId::from_random(0, LinkSide::Initiator).is_some());
    }

    #[test]
    fn header_layout_is_big_endian_id_then_command() {
        let cell = Cell::destroy(CircId::new(0x0102_0304).unwrap(), DestroyReason::Timeout);
        assert_eq!(cell.as_bytes()[..6], [1, 2, 3, 4, 5, 9]);
        assert!(cell.as_bytes()[6..].iter().all(|&b| b == 0));
    }

    #[test]
    fn setters_keep_header_valid() {
        let mut cell = Cell::new(CircId::new(7).unwrap(), ChanCmd::RelayEarly);
        assert!(cell.set_cmd(ChanCmd::Relay));
        assert!(!cell.set_cmd(ChanCmd::Padding));
        cell.set_circ_id(CircId::new(9).unwrap());
        assert_eq!(cell.circ_id(), CircId::new(9));
        assert_eq!(cell.cmd(), ChanCmd::Relay);
        let mut pad = Cell::padding();
        pad.set_circ_id(CircId::new(9).unwrap());
        assert!(!pad.set_cmd(ChanCmd::Relay));
        assert_eq!(Cell::parse(pad.as_bytes()), Ok(Cell::padding()));
    }
}
