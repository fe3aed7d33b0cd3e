//! Consistent hashing on a ring (`ip_hash`, `consistent_hash`): each server owns
//! `POINTS_PER_WEIGHT × weight` points on a 64-bit circle, placed by hashing its address
//! and the point's number; a key goes to the owner of the first point at or after the
//! key's hash, going round.
//!
//! Why a ring and not Maglev: both move about 1/N of the keys when a server joins, but a
//! ring also keeps that property when a server is *down* without rebuilding anything: the
//! lookup just walks on past the points of servers the request may not use, so only the
//! down server's keys move, each to the next live owner on the circle, and they come back
//! when it does. Maglev would need a table rebuilt on every health change (or a fallback
//! that moves more keys). Points are placed by address, not by position in the list, so
//! reordering the servers moves nothing. Lookup is a binary search over the points (640
//! for four servers of weight 1: ten steps).

use super::{Balancer, Hint, Server, stable_hash};

/// Points per unit of weight: enough that four servers' shares stay within a few points
/// of 25% each, few enough that a ring of a hundred servers stays in the L2 cache.
const POINTS_PER_WEIGHT: u32 = 160;

#[derive(Debug)]
pub struct RingHash {
    /// (hash, server index), sorted by hash.
    points: Vec<(u64, usize)>,
}

impl RingHash {
    pub fn new(servers: &[Server]) -> Self {
        let mut points = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            for n in 0..POINTS_PER_WEIGHT * server.weight.max(1) {
                let hash = stable_hash(&[server.addr.as_bytes(), b"#", &n.to_be_bytes()]);
                points.push((hash, index));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first eligible server at or after `hash`, going round the ring once.
    fn lookup(&self, hash: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|&(h, _)| h < hash);
        let (after, before) = (&self.points[start..], &self.points[..start]);
        after
            .iter()
            .chain(before)
            .map(|&(_, index)| index)
            .find(|&i| eligible(i))
    }
}

impl Balancer for RingHash {
    fn pick(
        &self,
        _servers: &[Server],
        hint: &Hint,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        // The hint always carries a hash for a hash pool (the client address when the
        // configured source is absent); 0 stands in should one not.
        self.lookup(hint.hash.unwrap_or(0), eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::super::servers;
    use super::*;

    fn owner(ring: &RingHash, key: u32, eligible: &dyn Fn(usize) -> bool) -> usize {
        let hash = stable_hash(&[b"key-", &key.to_be_bytes()]);
        ring.lookup(hash, eligible).unwrap()
    }

    const KEYS: u32 = 100_000;

    #[test]
    fn shares_follow_weights() {
        let s = servers(&[1, 1, 1, 1]);
        let ring = RingHash::new(&s);
        let mut counts = [0u32; 4];
        for k in 0..KEYS {
            counts[owner(&ring, k, &|_| true)] += 1;
        }
        for c in counts {
            let share = f64::from(c) / f64::from(KEYS);
            assert!((0.20..0.30).contains(&share), "{counts:?}");
        }
        let s = servers(&[1, 3]);
        let ring = RingHash::new(&s);
        let heavy = (0..KEYS)
            .filter(|&k| owner(&ring, k, &|_| true) == 1)
            .count();
        let share = heavy as f64 / f64::from(KEYS);
        assert!((0.70..0.80).contains(&share), "weight 3 of 4 got {share}");
    }

    #[test]
    fn a_fifth_server_moves_about_a_fifth_of_the_keys() {
        let four = servers(&[1, 1, 1, 1]);
        let five = servers(&[1, 1, 1, 1, 1]);
        let (before, after) = (RingHash::new(&four), RingHash::new(&five));
        let mut moved = 0;
        for k in 0..KEYS {
            let (a, b) = (owner(&before, k, &|_| true), owner(&after, k, &|_| true));
            if a != b {
                // Keys move only to the new server, never between the old ones.
                assert_eq!(b, 4, "key {k} moved from {a} to {b}");
                moved += 1;
            }
        }
        let share = f64::from(moved) / f64::from(KEYS);
        println!(
            "adding a fifth server to four moved {:.1}% of keys",
            share * 100.0
        );
        assert!(share <= 0.28, "moved {:.1}%", share * 100.0);
        assert!(
            share >= 0.12,
            "moved {:.1}%: the new server took too little",
            share * 100.0
        );
    }

    #[test]
    fn a_down_server_moves_only_its_own_keys_and_gets_them_back() {
        let s = servers(&[1, 1, 1, 1]);
        let ring = RingHash::new(&s);
        let mut moved = 0;
        for k in 0..KEYS {
            let up = owner(&ring, k, &|_| true);
            let down = owner(&ring, k, &|i| i != 2);
            if up == 2 {
                assert_ne!(down, 2);
                moved += 1;
            } else {
                assert_eq!(up, down, "key {k} of a live server moved");
            }
        }
        assert!(moved > 0);
        assert_eq!(ring.lookup(7, &|_| false), None);
    }

    #[test]
    fn order_of_the_servers_does_not_matter() {
        let s = servers(&[1, 1, 1]);
        let reversed: Vec<Server> = s.iter().rev().cloned().collect();
        let (a, b) = (RingHash::new(&s), RingHash::new(&reversed));
        for k in 0..1_000 {
            let i = owner(&a, k, &|_| true);
            let j = owner(&b, k, &|_| true);
            assert_eq!(s[i].addr, reversed[j].addr);
        }
    }
}
