//! A real `redis-server` (Debian's package) on a free loopback port, with nothing saved
//! to disk; killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
}

impl Redis {
    /// Start one, or `None` (with the reason printed) where `redis-server` is not
    /// installed. `.ci/run` installs it and sets `AIRLOCK_REQUIRE_REDIS=1`, which turns
    /// a missing server into a failure rather than a skip.
    pub fn start() -> Option<Self> {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if std::env::var_os("AIRLOCK_REQUIRE_REDIS").is_none() => {
                eprintln!(
                    "skipped: redis-server cannot run here ({e}); install Debian's redis-server"
                );
                return None;
            }
            Err(e) => panic!("redis-server is required (AIRLOCK_REQUIRE_REDIS): {e}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let redis = Self { child, addr };
        let deadline = Instant::now() + super::WAIT;
        while !redis.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Send `signal` (`STOP`, `CONT`, `KILL`) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
