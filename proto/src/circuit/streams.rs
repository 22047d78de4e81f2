//! The stream table both ends of a circuit keep: which streams are open, which direction
//! each has half-closed, and whether the peer asked us to stop sending (XOFF).

use std::collections::{HashMap, VecDeque};

use crate::relaymsg::StreamId;

use super::CircError;

/// How many recently ended stream ids are remembered. Messages the peer sent before it
/// saw our END may still arrive; they are dropped silently instead of destroying the
/// circuit (Tor's "half streams").
const RECENTLY_ENDED: usize = 64;

/// State of one open stream.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StreamState {
    /// We sent FIN: we send no more DATA.
    pub(crate) local_fin: bool,
    /// The peer sent FIN: it sends no more DATA.
    pub(crate) peer_fin: bool,
    /// The peer sent XOFF and no XON since.
    pub(crate) peer_xoff: bool,
    /// CONNECTED seen (client) or sent (exit).
    pub(crate) connected: bool,
}

/// What to do with a message for a stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The stream is open.
    Open,
    /// The stream ended recently: drop the message.
    RecentlyEnded,
}

/// Open streams of one circuit, plus recently ended ids.
#[derive(Debug, Default)]
pub(crate) struct StreamTable {
    open: HashMap<StreamId, StreamState>,
    ended: VecDeque<StreamId>,
    max_open: usize,
}

impl StreamTable {
    pub(crate) fn new(max_open: usize) -> Self {
        StreamTable {
            open: HashMap::new(),
            ended: VecDeque::with_capacity(RECENTLY_ENDED),
            max_open,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn contains(&self, id: StreamId) -> bool {
        self.open.contains_key(&id)
    }

    /// Opens `id`; a duplicate id is a protocol violation.
    pub(crate) fn insert(&mut self, id: StreamId) -> Result<(), CircError> {
        if self.open.len() >= self.max_open {
            return Err(CircError::StreamIdsExhausted);
        }
        if self.open.contains_key(&id) {
            return Err(CircError::Protocol {
                what: "BEGIN for a stream id already in use",
            });
        }
        self.ended.retain(|e| *e != id);
        self.open.insert(id, StreamState::default());
        Ok(())
    }

    /// Whether a message for `id` concerns an open stream, a recently ended one (drop
    /// it), or none (a protocol violation).
    pub(crate) fn lookup(&self, id: StreamId) -> Result<Lookup, CircError> {
        if self.open.contains_key(&id) {
            Ok(Lookup::Open)
        } else if self.ended.contains(&id) {
            Ok(Lookup::RecentlyEnded)
        } else {
            Err(CircError::UnknownStream(id))
        }
    }

    pub(crate) fn get_mut(&mut self, id: StreamId) -> Result<&mut StreamState, CircError> {
        self.open.get_mut(&id).ok_or(CircError::UnknownStream(id))
    }

    pub(crate) fn get(&self, id: StreamId) -> Result<&StreamState, CircError> {
        self.open.get(&id).ok_or(CircError::UnknownStream(id))
    }

    /// Forgets `id` (END sent or received, or both directions finished).
    pub(crate) fn end(&mut self, id: StreamId) {
        if self.open.remove(&id).is_some() {
            if self.ended.len() == RECENTLY_ENDED {
                self.ended.pop_front();
            }
            self.ended.push_back(id);
        }
    }

    /// Records a FIN from the peer; ends the stream if both directions are finished.
    /// Returns whether the stream is now fully closed.
    pub(crate) fn peer_fin(&mut self, id: StreamId) -> Result<bool, CircError> {
        let s = self.get_mut(id)?;
        s.peer_fin = true;
        let done = s.local_fin;
        if done {
            self.end(id);
        }
        Ok(done)
    }

    /// Records our FIN; ends the stream if both directions are finished.
    pub(crate) fn local_fin(&mut self, id: StreamId) -> Result<bool, CircError> {
        let s = self.get_mut(id)?;
        if s.local_fin {
            return Err(CircError::Protocol {
                what: "FIN sent twice on one stream",
            });
        }
        s.local_fin = true;
        let done = s.peer_fin;
        if done {
            self.end(id);
        }
        Ok(done)
    }

    /// Ids of all open streams (for ending them when the circuit goes away).
    pub(crate) fn ids(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.open.keys().copied()
    }

    /// A free id for a new client stream, starting the search at `*next`.
    pub(crate) fn allocate(&mut self, next: &mut u16) -> Result<StreamId, CircError> {
        for _ in 0..=u16::MAX {
            let candidate = *next;
            *next = next.wrapping_add(1);
            if let Some(id) = StreamId::new(candidate) {
                if !self.open.contains_key(&id) && !self.ended.contains(&id) {
                    self.insert(id)?;
                    return Ok(id);
                }
            }
        }
        Err(CircError::StreamIdsExhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u16) -> StreamId {
        StreamId::new(n).unwrap()
    }

    #[test]
    fn half_close_both_ways_ends_the_stream() {
        let mut t = StreamTable::new(8);
        t.insert(sid(1)).unwrap();
        assert!(!t.local_fin(sid(1)).unwrap());
        assert!(t.contains(sid(1)));
        assert!(t.peer_fin(sid(1)).unwrap());
        assert!(!t.contains(sid(1)));
        assert_eq!(t.lookup(sid(1)).unwrap(), Lookup::RecentlyEnded);
    }

    #[test]
    fn unknown_and_duplicate_streams_are_errors() {
        let mut t = StreamTable::new(8);
        assert!(matches!(t.lookup(sid(9)), Err(CircError::UnknownStream(_))));
        t.insert(sid(9)).unwrap();
        assert!(matches!(t.insert(sid(9)), Err(CircError::Protocol { .. })));
        assert!(matches!(t.local_fin(sid(9)), Ok(false)));
        assert!(matches!(
            t.local_fin(sid(9)),
            Err(CircError::Protocol { .. })
        ));
    }

    #[test]
    fn allocation_skips_ids_in_use_and_respects_the_limit() {
        let mut t = StreamTable::new(2);
        let mut next = 0;
        let a = t.allocate(&mut next).unwrap();
        let b = t.allocate(&mut next).unwrap();
        assert_ne!(a, b);
        assert!(matches!(
            t.allocate(&mut next),
            Err(CircError::StreamIdsExhausted)
        ));
    }

    #[test]
    fn recently_ended_ids_are_bounded() {
        let mut t = StreamTable::new(1000);
        for n in 1..=(RECENTLY_ENDED as u16 + 10) {
            t.insert(sid(n)).unwrap();
            t.end(sid(n));
        }
        assert!(matches!(t.lookup(sid(1)), Err(CircError::UnknownStream(_))));
        assert_eq!(
            t.lookup(sid(RECENTLY_ENDED as u16 + 10)).unwrap(),
            Lookup::RecentlyEnded
        );
    }
}
