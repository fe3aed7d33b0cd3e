//! One `[upstream.NAME]` pool: its configured servers, the [`Members`] they stand for now
//! (names resolved to addresses), health probes, and changes of members when DNS
//! answers change. A server that stays across a change keeps its live state (health,
//! counters, drain, idle connections); a server that goes keeps serving its open tunnels
//! and requests, and gets no new ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::balance::{self, HintSource};
use super::health::probe;
use super::members::Members;
use super::queue::Queue;
use super::resolve::{self, Address, Entry};
use super::server::Server;
use super::tls::UpstreamTls;

/// One `[upstream.NAME]` pool.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    members: ArcSwap<Members>,
    /// The `servers` entries, in file order (names with what they resolved to).
    entries: Vec<Entry>,
    cfg: airlock_config::Upstream,
    tls: Option<Arc<UpstreamTls>>,
    /// The hint source, kept so that every change of members keeps the sticky key.
    hints: HintSource,
    health_check: Option<Arc<airlock_config::HealthCheck>>,
    /// `max_conns`, shared by the servers.
    queue: Option<Arc<Queue>>,
    /// Set once probes run: servers added later get their own probe.
    probing: AtomicBool,
}

impl Pool {
    /// The pool, with the servers given as addresses. Names are resolved by
    /// [`Pool::resolve_names`] (at bind, before serving) and then every
    /// `resolve_interval` once [`Pool::start`] ran.
    pub fn from_config(
        name: &str,
        cfg: &airlock_config::Upstream,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        let entries: Vec<Entry> = cfg
            .servers
            .get_ref()
            .iter()
            .map(|s| Entry::new(&s.get_ref().addr, s.get_ref().weight))
            .collect();
        let pool = Self {
            name: name.into(),
            members: ArcSwap::from_pointee(Members::empty(name.into())),
            entries,
            cfg: cfg.clone(),
            tls,
            hints: HintSource::new(cfg, &[]),
            health_check: cfg
                .health_check
                .as_ref()
                .map(|c| Arc::new(c.get_ref().clone())),
            queue: Queue::from_config(cfg).map(Arc::new),
            probing: AtomicBool::new(false),
        };
        let servers = pool.servers_for(&pool.addresses(), &[]);
        pool.members.store(Arc::new(pool.members_of(servers)));
        pool
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        let cfg: airlock_config::Upstream =
            toml::from_str(r#"servers = ["127.0.0.1:1"]"#).expect("minimal upstream");
        Arc::new(Self::from_config("test", &cfg, None))
    }

    /// Whether it was built from `cfg` (a reload keeps it, with its servers' state).
    pub fn has_config(&self, cfg: &airlock_config::Upstream) -> bool {
        &self.cfg == cfg
    }

    /// The servers now. A request takes them once and keeps them for its life.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Start probing every server (when the pool has a `health_check`) and re-resolving
    /// its names. Both tasks end by themselves once the pool is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.health_check.is_some() {
            self.probing.store(true, Ordering::Relaxed);
            for server in self.members().servers() {
                self.probe(server);
            }
        }
        if self.entries.iter().any(|e| e.name().is_some()) {
            tokio::spawn(keep_resolving(
                Arc::downgrade(self),
                self.cfg.resolve_interval.get_ref().get(),
            ));
        }
    }

    fn probe(&self, server: &Server) {
        if let Some(check) = &self.health_check {
            tokio::spawn(probe::run(
                server.downgrade(),
                self.name.clone(),
                check.clone(),
            ));
        }
    }

    /// Resolve every name once, and change the members if the addresses changed.
    pub async fn resolve_names(&self) {
        for entry in &self.entries {
            entry.resolve(&self.name).await;
        }
        self.update_members();
    }

    fn has_unresolved_names(&self) -> bool {
        self.entries.iter().any(|e| {
            e.name()
                .is_some_and(|(_, state)| state.lock().expect("name state lock").addrs.is_empty())
        })
    }

    /// Every server the entries stand for now, in entry order; an address listed twice
    /// counts once (the first).
    fn addresses(&self) -> Vec<Address> {
        let mut out: Vec<Address> = Vec::new();
        for address in self.entries.iter().flat_map(Entry::addresses) {
            if !out.iter().any(|a| a.socket == address.socket) {
                out.push(address);
            }
        }
        out
    }

    /// Servers for `addresses`, reusing those of `current` that match (same address,
    /// name and weight) so that they keep their live state.
    fn servers_for(&self, addresses: &[Address], current: &[Server]) -> Vec<Server> {
        addresses
            .iter()
            .map(|a| {
                current
                    .iter()
                    .find(|s| {
                        s.socket() == a.socket
                            && s.name() == a.name.as_deref()
                            && s.weight == a.weight
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Server::with_settings(
                            a.socket,
                            a.name.as_ref(),
                            a.weight,
                            &self.cfg,
                            self.tls.as_ref(),
                            self.queue.as_ref(),
                        )
                    })
            })
            .collect()
    }

    fn members_of(&self, servers: Vec<Server>) -> Members {
        let fallback = self
            .cfg
            .sticky_fallback
            .as_ref()
            .map(|f| *f.get_ref())
            .unwrap_or_default();
        let balancer = balance::build(self.cfg.balance, fallback, &servers);
        let hints = self.hints.for_servers(&servers);
        Members::new(
            self.name.clone(),
            servers,
            balancer,
            hints,
            self.cfg.connect_attempts,
            self.queue.clone(),
        )
    }

    /// Swap in new members when the resolved addresses differ from the current ones.
    fn update_members(&self) {
        let current = self.members();
        let servers = self.servers_for(&self.addresses(), current.servers());
        let unchanged = servers.len() == current.servers().len()
            && servers
                .iter()
                .zip(current.servers())
                .all(|(a, b)| a.same(b));
        if unchanged {
            return;
        }
        let kept = |s: &Server, among: &[Server]| among.iter().any(|o| o.same(s));
        let added: Vec<&str> = servers
            .iter()
            .filter(|s| !kept(s, current.servers()))
            .map(|s| &*s.addr)
            .collect();
        let removed: Vec<&str> = current
            .servers()
            .iter()
            .filter(|s| !kept(s, &servers))
            .map(|s| &*s.addr)
            .collect();
        tracing::info!(
            upstream = &*self.name,
            added = ?added,
            removed = ?removed,
            servers = servers.len(),
            "upstream servers changed"
        );
        for server in current.servers() {
            if !kept(server, &servers) {
                server.retire();
            }
        }
        if self.probing.load(Ordering::Relaxed) {
            for server in servers.iter().filter(|s| !kept(s, current.servers())) {
                self.probe(server);
            }
        }
        self.members.store(Arc::new(self.members_of(servers)));
    }

    /// Live state for the admin endpoint.
    pub fn status(&self) -> serde_json::Value {
        let members = self.members();
        let servers: Vec<_> = members.servers().iter().map(Server::status).collect();
        let names: Vec<_> = self
            .entries
            .iter()
            .filter_map(|e| {
                let (name, state) = e.name()?;
                Some(state.lock().expect("name state lock").status(name))
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "balance": self.cfg.balance.name(),
            "max_conns": self.queue.as_ref().map(|q| q.max_conns),
            "servers": servers,
            "names": names,
        })
    }
}

/// Resolve a pool's names every `interval` until the pool is dropped.
async fn keep_resolving(pool: Weak<Pool>, interval: Duration) {
    let mut retry = Duration::from_secs(1);
    loop {
        let unresolved = match pool.upgrade() {
            Some(pool) => pool.has_unresolved_names(),
            None => return,
        };
        tokio::time::sleep(resolve::next_delay(unresolved, &mut retry, interval)).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.resolve_names().await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::upstream::balance::Hint;

    fn pool(toml: &str) -> Pool {
        let cfg: airlock_config::Upstream = toml::from_str(toml).unwrap();
        Pool::from_config("chat", &cfg, None)
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// What a resolution of entry `i` would give, applied as the resolver applies it.
    fn answer(pool: &Pool, i: usize, result: Result<Vec<SocketAddr>, String>) {
        let (name, state) = pool.entries[i].name().unwrap();
        state.lock().unwrap().record(&pool.name, name, result);
        pool.update_members();
    }

    fn listed(pool: &Pool) -> Vec<String> {
        let members = pool.members();
        members
            .servers()
            .iter()
            .map(|s| s.addr.to_string())
            .collect()
    }

    #[test]
    fn every_address_of_a_name_is_a_server_and_servers_that_stay_keep_their_state() {
        let p = pool(r#"servers = ["10.0.0.1:9000", { addr = "chat.test:9001", weight = 2 }]"#);
        assert_eq!(
            listed(&p),
            ["10.0.0.1:9000"],
            "names wait for their first answer"
        );
        assert!(p.has_unresolved_names());

        answer(&p, 1, Ok(addrs(&["10.0.0.2:9001", "10.0.0.3:9001"])));
        assert_eq!(
            listed(&p),
            ["10.0.0.1:9000", "10.0.0.2:9001", "10.0.0.3:9001"]
        );
        assert!(!p.has_unresolved_names());
        let before = p.members();
        let staying = before.server("10.0.0.2:9001").unwrap().clone();
        let going = before.server("10.0.0.3:9001").unwrap().clone();
        assert_eq!(staying.name(), Some("chat.test:9001"));
        assert_eq!(staying.weight, 2);
        staying.set_drained(true);
        let _tunnel = going.track().into_tunnel();

        answer(&p, 1, Ok(addrs(&["10.0.0.2:9001", "10.0.0.4:9001"])));
        assert_eq!(
            listed(&p),
            ["10.0.0.1:9000", "10.0.0.2:9001", "10.0.0.4:9001"]
        );
        let after = p.members();
        let stayed = after.server("10.0.0.2:9001").unwrap();
        assert!(
            stayed.same(&staying),
            "the same live state, not a new server"
        );
        assert!(stayed.is_drained(), "a drain survives the change");
        assert!(going.is_retired(), "the removed server's probe stops");
        assert_eq!(going.active(), 1, "its open tunnel is not touched");
        assert!(
            before.server("10.0.0.3:9001").is_some(),
            "old members unchanged"
        );
        assert!(
            after
                .server("10.0.0.1:9000")
                .unwrap()
                .same(before.server("10.0.0.1:9000").unwrap())
        );
    }

    #[test]
    fn a_failed_resolution_keeps_the_last_good_set() {
        let p = pool(r#"servers = ["chat.test:9001"]"#);
        answer(&p, 0, Ok(addrs(&["10.0.0.2:9001"])));
        let before = p.members();
        answer(&p, 0, Err("temporary failure in name resolution".into()));
        assert!(Arc::ptr_eq(&before, &p.members()), "members not rebuilt");
        let status = p.status();
        assert_eq!(status["names"][0]["name"], "chat.test:9001");
        assert_eq!(status["names"][0]["addresses"][0], "10.0.0.2:9001");
        assert_eq!(
            status["names"][0]["error"],
            "temporary failure in name resolution"
        );
        assert_eq!(status["servers"][0]["name"], "chat.test:9001");
        answer(&p, 0, Ok(addrs(&["10.0.0.2:9001"])));
        assert!(p.status()["names"][0]["error"].is_null(), "resolves again");
        assert!(
            Arc::ptr_eq(&before, &p.members()),
            "same answer, same members"
        );
    }

    #[test]
    fn an_address_listed_twice_is_one_server() {
        let p = pool(r#"servers = ["10.0.0.2:9001", "chat.test:9001"]"#);
        answer(&p, 1, Ok(addrs(&["10.0.0.2:9001", "10.0.0.3:9001"])));
        assert_eq!(listed(&p), ["10.0.0.2:9001", "10.0.0.3:9001"]);
        assert_eq!(
            p.members().servers()[0].name(),
            None,
            "the first listing wins"
        );
    }

    #[test]
    fn sticky_cookies_of_servers_that_stay_stay_valid() {
        // No secret: a generated key, which must survive the change of servers.
        let p = pool("servers = [\"chat.test:9001\"]\nbalance = \"sticky_cookie\"");
        answer(&p, 0, Ok(addrs(&["10.0.0.2:9001", "10.0.0.3:9001"])));
        let before = p.members();
        let server = before.server("10.0.0.3:9001").unwrap().addr.clone();
        let cookie = before
            .set_cookie(&Hint::default(), &server, false)
            .expect("a new client gets a cookie");
        let pair = cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();

        answer(&p, 0, Ok(addrs(&["10.0.0.1:9001", "10.0.0.3:9001"])));
        let after = p.members();
        let mut req = http::Request::builder()
            .header("cookie", pair)
            .body(())
            .unwrap();
        let hint = after
            .hints
            .read(&mut req, "192.0.2.1".parse().unwrap(), None);
        let named = hint.sticky.map(|i| after.servers()[i].addr.to_string());
        assert_eq!(named.as_deref(), Some("10.0.0.3:9001"));
    }

    #[tokio::test]
    async fn the_system_resolver_answers_for_localhost_and_fails_for_invalid_names() {
        let found = resolve::lookup("localhost:9001").await.unwrap();
        assert!(
            found
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 9001),
            "{found:?}"
        );
        assert!(resolve::lookup("no-such-host.invalid:9001").await.is_err());
    }
}
