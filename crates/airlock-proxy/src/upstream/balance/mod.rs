//! Balancers: how a pool picks one of its servers. A balancer sees the servers and a
//! predicate saying which may be picked now (healthy and not yet tried for this request).

mod least_conn;
mod round_robin;

pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;

use super::server::Server;

pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index of the server to use, or `None` when `eligible` rules out every server.
    fn pick(&self, servers: &[Server], eligible: &dyn Fn(usize) -> bool) -> Option<usize>;

    /// Pick for a request that carries an affinity key (set by a plugin, for example a
    /// Socket.IO session id). Balancers that keep a key on one server (hash, sticky)
    /// override this; the others ignore the key.
    fn pick_for(
        &self,
        servers: &[Server],
        _affinity_key: Option<&str>,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        self.pick(servers, eligible)
    }
}

pub fn build(kind: airlock_config::Balance, servers: &[Server]) -> Box<dyn Balancer> {
    match kind {
        airlock_config::Balance::RoundRobin => Box::new(RoundRobin::new(servers)),
        airlock_config::Balance::LeastConn => Box::new(LeastConn::default()),
    }
}

#[cfg(test)]
pub(crate) fn servers(weights: &[u32]) -> Vec<Server> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Server::new(format!("127.0.0.1:{}", 9000 + i), *w))
        .collect()
}
