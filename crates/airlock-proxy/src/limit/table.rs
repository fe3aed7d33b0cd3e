//! The per-key state of one limit, bounded: at most `max_keys` keys, the idle ones
//! forgotten first.
//!
//! Why not `governor`'s keyed limiter: it has no bound on keys (its `retain_recent` is a
//! sweep the caller must schedule, and a flood grows the map between sweeps), and its
//! state is the rate alone, while a limit here keeps a rate and a concurrent count per
//! key, changed together under one lock. Why not `dashmap`: the cap is per shard, and
//! "evict, then insert" must happen under the shard's lock, which dashmap does not
//! expose without its raw API. So: shards of `hashbrown::HashTable` behind a `Mutex`
//! each (uncontended, a lock is two atomic operations). A key is hashed once per
//! admission, and that one hash picks the shard and finds the entry: `HashTable` takes
//! the hash from its caller, where std's `HashMap` would hash again on every lookup
//! (with SipHash, four hashes were most of a limit's ~1,000 instructions per handshake).
//! The hash is foldhash's `quality` variant with a random seed per table: the keys come
//! from clients, and a fixed hash would let them aim at one bucket. Both crates were in
//! the build already (wasmtime uses them).
//!
//! Eviction, only when a shard is full and a new key arrives: first every idle entry
//! (no tunnel open, TAT passed: the same as never seen, so forgetting it changes no
//! answer); if that frees less than an eighth of the shard, also the entries with no
//! tunnel open and the earliest TATs (the keys closest to idle: forgetting one gives it a
//! fresh burst). Entries with a tunnel open are never forgotten (their count must come
//! back down); when every entry of a shard has one, a new key is refused. A sweep frees
//! at least an eighth of a shard, so its cost is spread over that many inserts.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

use foldhash::quality::RandomState;
use hashbrown::HashTable;

/// What a limit counts separately: a client address, or bytes (a header's value, a route's
/// name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    Bytes(Box<[u8]>),
}

/// The longest key kept as it is; a longer one (a header value can be kilobytes) is kept
/// as its SHA-256, so a tracked key costs the same whatever the client sends. A digest is
/// 32 bytes, so no kept key is ever mistaken for one.
const MAX_KEY_BYTES: usize = 31;

impl Key {
    pub fn bytes(value: &[u8]) -> Self {
        if value.len() <= MAX_KEY_BYTES {
            Self::Bytes(value.into())
        } else {
            Self::Bytes(
                ring::digest::digest(&ring::digest::SHA256, value)
                    .as_ref()
                    .into(),
            )
        }
    }
}

/// One key's state.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// The rate's theoretical arrival time (see `rate`); 0 when the limit has no rate.
    tat: u64,
    /// Tunnels and requests open under the key.
    open: u32,
}

impl State {
    fn idle(&self, now: u64) -> bool {
        self.open == 0 && self.tat <= now
    }
}

/// Why the table refused a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The rate is spent; a request would be admitted after this long.
    Rate(std::time::Duration),
    /// The key has `concurrent` open already.
    Concurrent,
    /// Every tracked key has a tunnel open and the table is full.
    Full,
}

/// What one admission asks of a key.
pub struct Ask<'a> {
    pub rate: Option<&'a super::rate::Gcra>,
    /// `Some(max)`: take an open slot, at most `max` per key.
    pub concurrent: Option<u32>,
    pub now: u64,
}

/// A shard: each entry is a key and its state.
type Shard = HashTable<(Key, State)>;

pub struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish()
    }
}

impl Table {
    /// A table for at most `max_keys` keys (rounded up to a whole number per shard).
    pub fn new(max_keys: usize) -> Self {
        // Shards of at least 1024 keys, at most 64 of them: enough that two cores rarely
        // meet on one lock, few enough that a small table is not all overhead.
        let shards = (max_keys / 1024).clamp(1, 64);
        let per_shard = max_keys.div_ceil(shards).max(1);
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: RandomState::default(),
            per_shard,
        }
    }

    /// The key's hash, and its shard.
    fn shard(&self, key: &Key) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(key);
        // The middle bits: the table uses the low ones for buckets, the top 7 for tags.
        let index = ((hash >> 32) as usize) % self.shards.len();
        (hash, &self.shards[index])
    }

    /// Admit one request under `key`: check the rate and the open count together, and
    /// change nothing unless both pass.
    pub fn admit(&self, key: &Key, ask: &Ask<'_>) -> Result<(), Refused> {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, state)) = shard.find_mut(hash, |(k, _)| k == key) {
            *state = ask.apply(*state)?;
            return Ok(());
        }
        if shard.len() >= self.per_shard {
            evict(&mut shard, ask.now);
            if shard.len() >= self.per_shard {
                return Err(Refused::Full);
            }
        }
        let state = ask.apply(State::default())?;
        shard.insert_unique(hash, (key.clone(), state), |(k, _)| self.hasher.hash_one(k));
        Ok(())
    }

    /// Give back an open slot taken by [`Table::admit`]; the key is forgotten when that
    /// leaves it idle.
    pub fn release(&self, key: &Key, now: u64) {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut entry) = shard.find_entry(hash, |(k, _)| k == key) {
            let state = &mut entry.get_mut().1;
            state.open = state.open.saturating_sub(1);
            if state.idle(now) {
                entry.remove();
            }
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Keys it may track.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Open slots under `key` (for tests and the admin view).
    #[cfg(test)]
    fn open(&self, key: &Key) -> u32 {
        let (hash, shard) = self.shard(key);
        let shard = shard.lock().unwrap();
        shard
            .find(hash, |(k, _)| k == key)
            .map_or(0, |(_, s)| s.open)
    }
}

impl Ask<'_> {
    /// The key's state after this admission, or why it is refused.
    fn apply(&self, state: State) -> Result<State, Refused> {
        if let Some(max) = self.concurrent
            && state.open >= max
        {
            return Err(Refused::Concurrent);
        }
        let tat = match self.rate {
            Some(rate) => rate.check(state.tat, self.now).map_err(Refused::Rate)?,
            None => state.tat,
        };
        let open = state.open + u32::from(self.concurrent.is_some());
        Ok(State { tat, open })
    }
}

/// Make room in a full shard (see the module doc).
fn evict(shard: &mut Shard, now: u64) {
    let before = shard.len();
    shard.retain(|(_, s)| !s.idle(now));
    let wanted = before.div_ceil(8);
    let freed = before - shard.len();
    if freed >= wanted {
        return;
    }
    let mut tats: Vec<u64> = shard
        .iter()
        .filter(|(_, s)| s.open == 0)
        .map(|(_, s)| s.tat)
        .collect();
    if tats.is_empty() {
        return;
    }
    let nth = (wanted - freed).min(tats.len()) - 1;
    let (_, threshold, _) = tats.select_nth_unstable(nth);
    let threshold = *threshold;
    shard.retain(|(_, s)| s.open > 0 || s.tat > threshold);
}

#[cfg(test)]
mod tests {
    use super::super::rate::Gcra;
    use super::*;
    use std::time::Duration;

    fn ip(n: u32) -> Key {
        Key::Ip(IpAddr::from(n.to_be_bytes()))
    }

    #[test]
    fn rate_and_concurrency_change_together() {
        let table = Table::new(10);
        let rate = Gcra::new(10, Duration::from_secs(1), 2);
        let ask = Ask {
            rate: Some(&rate),
            concurrent: Some(1),
            now: 1_000,
        };
        let k = ip(1);
        assert_eq!(table.admit(&k, &ask), Ok(()));
        // The open slot refuses the second before the rate is asked: its burst is kept.
        assert_eq!(table.admit(&k, &ask), Err(Refused::Concurrent));
        table.release(&k, 1_000);
        assert_eq!(table.open(&k), 0);
        assert_eq!(table.admit(&k, &ask), Ok(()));
        table.release(&k, 1_000);
        assert!(matches!(table.admit(&k, &ask), Err(Refused::Rate(_))));
    }

    #[test]
    fn a_flood_of_keys_stays_within_the_cap() {
        let table = Table::new(4096);
        let rate = Gcra::new(1, Duration::from_secs(3600), 1);
        for n in 0..100_000 {
            let ask = Ask {
                rate: Some(&rate),
                concurrent: None,
                now: 1_000 + u64::from(n),
            };
            // Every key is in debt for an hour; the earliest are forgotten for new ones.
            assert_eq!(table.admit(&ip(n), &ask), Ok(()));
        }
        assert!(table.len() <= 4096, "{} keys", table.len());
    }

    #[test]
    fn keys_with_open_tunnels_are_never_forgotten() {
        let table = Table::new(2);
        let ask = Ask {
            rate: None,
            concurrent: Some(5),
            now: 0,
        };
        assert_eq!(table.admit(&ip(1), &ask), Ok(()));
        assert_eq!(table.admit(&ip(2), &ask), Ok(()));
        assert_eq!(table.admit(&ip(3), &ask), Err(Refused::Full));
        table.release(&ip(1), 0);
        assert_eq!(table.admit(&ip(3), &ask), Ok(()));
        assert_eq!(table.open(&ip(2)), 1);
    }

    #[test]
    fn idle_keys_are_forgotten_on_release() {
        let table = Table::new(10);
        let ask = Ask {
            rate: None,
            concurrent: Some(5),
            now: 0,
        };
        table.admit(&ip(1), &ask).unwrap();
        assert_eq!(table.len(), 1);
        table.release(&ip(1), 0);
        assert_eq!(table.len(), 0);
    }
}
