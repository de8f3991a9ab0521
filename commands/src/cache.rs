//! The in-memory state of streams: what a stream task holds while it runs, and the
//! bounded cache where that state waits, between bursts, for the stream's next task.
//!
//! A state is moved, never copied: a starting stream task takes its state out of the
//! cache and a retiring one puts it back. So a cached state is never shared, and a
//! big one (a flash-sale SKU's reservations) is never cloned on the command path.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use uuid::Uuid;

use crate::Positions;

/// Maps and sets keyed by command ids, looked up for every command a stream task
/// decides. Their size is bounded (a round, or `recent_commands_per_stream`), so a
/// fast seeded hash is enough even for ids a client chose; SipHash showed up in the
/// flash-sale profile.
pub(crate) type IdMap<V> = HashMap<Uuid, V, foldhash::fast::RandomState>;
pub(crate) type IdSet = HashSet<Uuid, foldhash::fast::RandomState>;

/// One stream's state as the command side knows it.
pub(crate) struct Held<A> {
    pub state: A,
    /// The version `state` is at: the number of events folded into it.
    pub version: u64,
    /// The version of the latest snapshot known to be stored (or being written).
    pub snapshot_version: u64,
    pub recent: RecentCommands,
}

impl<A: Default> Held<A> {
    pub fn empty(recent_max: usize) -> Self {
        Held {
            state: A::default(),
            version: 0,
            snapshot_version: 0,
            recent: RecentCommands::new(recent_max),
        }
    }
}

/// What a command wrote, kept to answer a repeat of its command id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub positions: Positions,
    pub stream_version: u64,
}

/// The last few command ids that wrote to one stream, oldest evicted first. The
/// store itself answers repeats of a command appended alone; this memory answers
/// repeats of commands that were appended together with others in one batch (see
/// `stream.rs`), as long as they are recent.
pub(crate) struct RecentCommands {
    max: usize,
    order: VecDeque<Uuid>,
    by_id: IdMap<Recorded>,
}

impl RecentCommands {
    pub fn new(max: usize) -> Self {
        RecentCommands {
            max,
            order: VecDeque::new(),
            by_id: IdMap::default(),
        }
    }

    pub fn get(&self, command_id: &Uuid) -> Option<Recorded> {
        self.by_id.get(command_id).copied()
    }

    /// Notes that `command_id` wrote the event at `position`, stream version
    /// `version`; a command's events arrive in order, so a later one extends it.
    pub fn note_event(&mut self, command_id: Uuid, position: u64, version: u64) {
        if let Some(recorded) = self.by_id.get_mut(&command_id) {
            recorded.positions.last = recorded.positions.last.max(position);
            recorded.stream_version = recorded.stream_version.max(version);
            return;
        }
        self.insert(
            command_id,
            Recorded {
                positions: Positions {
                    first: position,
                    last: position,
                },
                stream_version: version,
            },
        );
    }

    pub fn insert(&mut self, command_id: Uuid, recorded: Recorded) {
        if self.max == 0 {
            return;
        }
        if self.by_id.insert(command_id, recorded).is_none() {
            self.order.push_back(command_id);
        }
        while self.order.len() > self.max {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
        debug_assert_eq!(self.order.len(), self.by_id.len());
    }
}

/// Parked states of idle streams, at most `max_streams`; the one parked longest ago
/// is evicted first.
pub(crate) struct StateCache<A> {
    max_streams: usize,
    next_stamp: u64,
    entries: HashMap<String, (u64, Held<A>)>,
    by_age: BTreeMap<u64, String>,
}

impl<A> StateCache<A> {
    pub fn new(max_streams: usize) -> Self {
        StateCache {
            max_streams,
            next_stamp: 0,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    pub fn take(&mut self, stream_id: &str) -> Option<Held<A>> {
        let (stamp, held) = self.entries.remove(stream_id)?;
        self.by_age.remove(&stamp);
        Some(held)
    }

    /// Parks a stream's state. A state older than the one parked already is dropped:
    /// two tasks of one stream can overlap for a moment when one retires as the next
    /// starts.
    pub fn park(&mut self, stream_id: String, held: Held<A>) {
        if self.max_streams == 0 {
            return;
        }
        if let Some(parked) = self.take(&stream_id) {
            if parked.version > held.version {
                self.park(stream_id, parked);
                return;
            }
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.by_age.insert(stamp, stream_id.clone());
        self.entries.insert(stream_id, (stamp, held));
        while self.entries.len() > self.max_streams {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        debug_assert_eq!(self.entries.len(), self.by_age.len());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(version: u64) -> Held<u64> {
        Held {
            state: version,
            version,
            snapshot_version: 0,
            recent: RecentCommands::new(4),
        }
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound_and_evicts_the_oldest() {
        let mut cache = StateCache::new(2);
        cache.park("a".into(), held(1));
        cache.park("b".into(), held(2));
        cache.park("c".into(), held(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.take("a").is_none());
        assert_eq!(cache.take("c").map(|h| h.version), Some(3));
        assert_eq!(cache.take("b").map(|h| h.version), Some(2));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn parking_an_older_state_keeps_the_newer_one() {
        let mut cache = StateCache::new(4);
        cache.park("a".into(), held(7));
        cache.park("a".into(), held(5));
        assert_eq!(cache.take("a").map(|h| h.version), Some(7));
    }

    #[test]
    fn recent_commands_forget_the_oldest_past_their_bound() {
        let mut recent = RecentCommands::new(2);
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        for (i, id) in ids.iter().enumerate() {
            recent.note_event(*id, i as u64 + 1, i as u64 + 1);
        }
        assert!(recent.get(&ids[0]).is_none());
        assert_eq!(recent.get(&ids[2]).map(|r| r.stream_version), Some(3));
        recent.note_event(ids[2], 9, 4);
        assert_eq!(
            recent
                .get(&ids[2])
                .map(|r| (r.positions.first, r.positions.last)),
            Some((3, 9))
        );
    }
}
