//! The stream-carrying end of a circuit: the client, or the hop that exits its streams.
//!
//! Both ends keep the same state and apply the same rules: a table of streams, congestion
//! control of the DATA they send (acknowledged by authenticated SENDMEs), and a schedule of
//! SENDMEs for the DATA they receive.

use std::collections::VecDeque;
use std::time::Instant;

use crate::cc::{SendmeSchedule, Vegas, VegasParams};
use crate::consts::{RELAY_BODY_MAX, RELAY_PAYLOAD_LEN};
use crate::relaymsg::{encode_data, RelayMsg, RelayMsgError, StreamId, Xon};

use super::streams::{Lookup, StreamTable};
use super::{tags_equal, CircError, SendmeTag};

/// A stream message arriving at an edge, before the edge has checked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamMsg {
    /// DATA.
    Data,
    /// FIN: the peer sends no more data.
    Fin,
    /// END: the stream is closed.
    End,
    /// XOFF (`true`) or XON (`false`).
    Flow(bool),
}

/// One cell of DATA ready to queue.
pub(crate) struct DataCell {
    /// The encoded relay message area.
    pub(crate) area: [u8; RELAY_PAYLOAD_LEN],
    /// Bytes of the caller's data it carries.
    pub(crate) taken: usize,
    /// Its SENDME will come back: record its tag when it is encrypted.
    pub(crate) sendme_tracked: bool,
}

/// Streams, congestion control and SENDME bookkeeping of one circuit end.
#[derive(Debug)]
pub(crate) struct Edge {
    pub(crate) streams: StreamTable,
    pub(crate) cc: Vegas,
    /// Tags the peer's next SENDMEs must carry, oldest first.
    expected_sendmes: VecDeque<SendmeTag>,
    /// When to acknowledge the peer's DATA.
    sendme_rx: SendmeSchedule,
}

impl Edge {
    pub(crate) fn new(vegas: VegasParams, max_streams: usize) -> Edge {
        Edge {
            streams: StreamTable::new(max_streams),
            sendme_rx: SendmeSchedule::new(vegas.sendme_inc),
            cc: Vegas::new(vegas),
            expected_sendmes: VecDeque::new(),
        }
    }

    /// Restarts congestion control with other parameters (the negotiated SENDME
    /// increment); only before any DATA has moved.
    pub(crate) fn reset_cc(&mut self, vegas: VegasParams) {
        self.sendme_rx = SendmeSchedule::new(vegas.sendme_inc);
        self.cc = Vegas::new(vegas);
    }

    /// A SENDME from the peer: it must carry the tag of the oldest tracked cell.
    pub(crate) fn on_sendme(&mut self, got: &SendmeTag, now: Instant) -> Result<(), CircError> {
        match self.expected_sendmes.pop_front() {
            Some(want) if tags_equal(&want, got) => {}
            _ => {
                return Err(CircError::Protocol {
                    what: "SENDME with a tag of no cell we sent",
                })
            }
        }
        self.cc.on_sendme(now)?;
        Ok(())
    }

    /// Counts a received DATA cell (whatever its stream); `true` when a SENDME is due.
    pub(crate) fn on_data_cell(&mut self) -> bool {
        self.sendme_rx.on_data_received()
    }

    /// DATA cells received so far (whatever their stream).
    pub(crate) fn data_received(&self) -> u64 {
        self.sendme_rx.received()
    }

    /// Records the tag of a tracked cell as it is encrypted.
    pub(crate) fn track_sent(&mut self, tag: SendmeTag) {
        self.expected_sendmes.push_back(tag);
    }

    /// Checks a stream message against the stream table and applies it. `Ok(false)`:
    /// the stream ended recently and the message is dropped silently.
    pub(crate) fn on_stream_msg(
        &mut self,
        id: StreamId,
        msg: StreamMsg,
    ) -> Result<bool, CircError> {
        if self.streams.lookup(id)? == Lookup::RecentlyEnded {
            return Ok(false);
        }
        match msg {
            StreamMsg::Data => {
                let s = self.streams.get(id)?;
                if s.peer_fin || !s.connected {
                    return Err(CircError::Protocol {
                        what: "DATA before CONNECTED or after FIN",
                    });
                }
            }
            StreamMsg::Fin => {
                self.streams.peer_fin(id)?;
            }
            StreamMsg::End => self.streams.end(id),
            StreamMsg::Flow(paused) => self.streams.get_mut(id)?.peer_xoff = paused,
        }
        Ok(true)
    }

    /// CONNECTED for `stream` (received by the client, sent by the exit): marks it
    /// connected. `Ok(false)`: the stream ended recently, nothing to do.
    pub(crate) fn on_connected(&mut self, id: StreamId) -> Result<bool, CircError> {
        if self.streams.lookup(id)? == Lookup::RecentlyEnded {
            return Ok(false);
        }
        let s = self.streams.get_mut(id)?;
        if s.connected {
            return Err(CircError::Protocol {
                what: "CONNECTED twice on one stream",
            });
        }
        s.connected = true;
        Ok(true)
    }

    /// Whether congestion and flow control let `stream` send now.
    pub(crate) fn can_send(&self, stream: StreamId) -> bool {
        self.cc.can_send()
            && self
                .streams
                .get(stream)
                .is_ok_and(|s| s.connected && !s.peer_xoff && !s.local_fin)
    }

    /// Encodes up to one cell of `data` on `stream`; `None` when congestion or flow
    /// control says wait (or there is nothing to send).
    pub(crate) fn data_cell(
        &mut self,
        stream: StreamId,
        data: &[u8],
        now: Instant,
    ) -> Result<Option<DataCell>, RelayMsgError> {
        if !self.can_send(stream) || data.is_empty() {
            return Ok(None);
        }
        let taken = data.len().min(RELAY_BODY_MAX);
        let mut area = [0u8; RELAY_PAYLOAD_LEN];
        encode_data(&mut area, stream, &data[..taken])?;
        Ok(Some(DataCell {
            area,
            taken,
            sendme_tracked: self.cc.on_data_sent(now),
        }))
    }

    /// Checks that `stream` may still send DATA.
    pub(crate) fn check_may_send(&self, stream: StreamId) -> Result<(), CircError> {
        if self.streams.get(stream)?.local_fin {
            return Err(CircError::Protocol {
                what: "DATA after our own FIN",
            });
        }
        Ok(())
    }

    /// Our FIN on `stream`: the message to send.
    pub(crate) fn fin(&mut self, stream: StreamId) -> Result<RelayMsg<'static>, CircError> {
        self.streams.local_fin(stream)?;
        Ok(RelayMsg::Fin(stream))
    }

    /// Ends `stream` if it is open; whether it was (so END must be sent).
    pub(crate) fn end(&mut self, stream: StreamId) -> bool {
        let open = self.streams.contains(stream);
        self.streams.end(stream);
        open
    }

    /// XOFF (`paused`) or XON for `stream`: the message to send.
    pub(crate) fn flow(
        &self,
        stream: StreamId,
        paused: bool,
    ) -> Result<RelayMsg<'static>, CircError> {
        self.streams.get(stream)?;
        Ok(if paused {
            RelayMsg::Xoff(stream)
        } else {
            RelayMsg::Xon(stream, Xon { kib_per_sec: None })
        })
    }
}
