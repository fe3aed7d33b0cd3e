//! Balancers: how a pool picks one of its servers. A balancer sees the servers, what the
//! request brings ([`Hint`]: a hash of its key, the server its sticky cookie names) and a
//! predicate saying which servers may be picked now (healthy and not yet tried for this
//! request). Every balancer honours weights and the predicate.
//!
//! | `balance` | picks | file |
//! |---|---|---|
//! | `round_robin` | each server in turn, smooth by weight | `round_robin.rs` |
//! | `least_conn` | the fewest in flight per weight | `least_conn.rs` |
//! | `random_two` | the less loaded of two drawn by weight | `random_two.rs` |
//! | `ip_hash`, `consistent_hash` | a point on a hash ring | `ring_hash.rs` |
//! | `sticky_cookie` | the server a signed cookie names, else its fallback | `sticky.rs` |
//!
//! What a request is hashed by, and the cookie it carries, are read in `hint.rs`.

mod hint;
mod least_conn;
mod random_two;
mod ring_hash;
mod round_robin;
mod sticky;

pub use hint::{Hint, HintSource};
pub use least_conn::LeastConn;
pub use random_two::RandomTwo;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use sticky::Sticky;

use airlock_config::Balance;

use super::server::Server;

pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index of the server to use, or `None` when `eligible` rules out every server.
    fn pick(
        &self,
        servers: &[Server],
        hint: &Hint,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize>;
}

/// The balancer `kind` names, over `servers`; `fallback` is a `sticky_cookie` pool's
/// `sticky_fallback`.
pub fn build(kind: Balance, fallback: Balance, servers: &[Server]) -> Box<dyn Balancer> {
    match kind {
        Balance::RoundRobin => Box::new(RoundRobin::new(servers)),
        Balance::LeastConn => Box::new(LeastConn::default()),
        Balance::RandomTwo => Box::new(RandomTwo),
        Balance::IpHash | Balance::ConsistentHash => Box::new(RingHash::new(servers)),
        // Validation refuses a sticky fallback; should one get here, round robin stands in.
        Balance::StickyCookie => Box::new(Sticky {
            fallback: match fallback {
                Balance::StickyCookie => build(Balance::RoundRobin, Balance::RoundRobin, servers),
                other => build(other, Balance::RoundRobin, servers),
            },
        }),
    }
}

/// A stable 64-bit hash: the same on every airlock instance and version, so instances in
/// front of one pool agree on where a key goes. The first 8 bytes of SHA-256 (ring, which
/// rustls already builds); a request hashes one short key, well under a microsecond.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
pub(crate) fn servers(weights: &[u32]) -> Vec<Server> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Server::new(&format!("127.0.0.1:{}", 9000 + i), *w))
        .collect()
}
