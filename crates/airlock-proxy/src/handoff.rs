//! Handing the listening sockets from one airlock process to the next, so that a new
//! binary (or a restart with a changed `[admin]` or anything a reload cannot change)
//! takes over without a moment in which connections are refused.
//!
//! Both processes are started with the same `--handoff PATH`. The running one listens on
//! the Unix socket at `PATH`. A new one connects there before it binds anything and asks
//! for the sockets; the running one sends a description of its listeners and the admin
//! endpoint, with their file descriptors attached (`SCM_RIGHTS`), so both processes now
//! hold the very same listening sockets: their accept queues are shared, and a connection
//! waiting in one is never reset. The new process uses the sockets its own configuration
//! names (same address; same name too where the port is 0), binds the rest, brings up
//! its pools and limits, and says `ready`. The old one answers `ok`, stops accepting and
//! drains its connections and tunnels as on SIGTERM; only then does the new one serve,
//! and take `PATH` over for the next upgrade.
//!
//! A new process that fails before `ready` (a port it cannot bind, a Redis it cannot
//! reach) exits with its error; the old one keeps serving as before.
//!
//! The wire: the new process writes `airlock-handoff/1 pid=N\n`; the old one answers with
//! one JSON line, `{"pid":N,"listeners":[{"name":..,"addr":..}],"admin":ADDR|null}`,
//! carrying the descriptors of the listeners in that order and then the admin endpoint's;
//! then `ready\n` and `ok\n`.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const HELLO: &str = "airlock-handoff/1";
/// The most sockets one handoff carries (the kernel takes 253 descriptors per message).
pub const MAX_SOCKETS: usize = 250;
/// How long either side waits for the other's next line. The new process builds its
/// configuration (plugins compiled) before it connects, so this only covers binding,
/// name resolution and connecting shared limits.
const PATIENCE: Duration = Duration::from_secs(60);

/// Why a handoff failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot reach the airlock serving {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("handoff with pid {pid} failed: {source}")]
    Exchange { pid: u32, source: io::Error },
    /// Before the other process said who it is.
    #[error("handoff failed: {0}")]
    Io(#[from] io::Error),
    #[error("handoff failed: {0}")]
    Protocol(String),
}

/// A socket as one side describes it to the other: its configured name and address.
#[derive(Debug)]
pub struct Described<S> {
    pub name: String,
    pub addr: SocketAddr,
    pub socket: S,
}

/// What a running process hands over.
pub struct Offered {
    pub listeners: Vec<Described<OwnedFd>>,
    /// The admin endpoint: its configured address and socket.
    pub admin: Option<(SocketAddr, OwnedFd)>,
}

/// The sockets taken over from a predecessor, and the line back to it.
#[derive(Debug)]
pub struct Inherited {
    pub listeners: Vec<Described<TcpListener>>,
    pub admin: Option<(SocketAddr, TcpListener)>,
    predecessor: UnixStream,
    pid: u32,
}

impl Inherited {
    /// The predecessor's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Take the listener configured as `name` at `addr`, if the predecessor had it: the
    /// same address, and where the port is 0 (any port) the same name too.
    pub fn take_listener(&mut self, name: &str, addr: SocketAddr) -> Option<TcpListener> {
        let at = self
            .listeners
            .iter()
            .position(|l| l.addr == addr && (addr.port() != 0 || l.name == name))?;
        Some(self.listeners.remove(at).socket)
    }

    /// Take the admin endpoint's socket if it was configured at `addr`.
    pub fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        match self.admin.take() {
            Some((was, socket)) if was == addr => Some(socket),
            other => {
                self.admin = other;
                None
            }
        }
    }

    /// Tell the predecessor this process is ready, and wait for it to stop accepting. An
    /// error means the predecessor did not agree (it gave up waiting, or died): it, or
    /// nobody, serves the sockets now, so this process must not.
    pub fn commit(self) -> Result<(), HandoffError> {
        let pid = self.pid;
        let exchange = |source| HandoffError::Exchange { pid, source };
        (&self.predecessor)
            .write_all(b"ready\n")
            .map_err(exchange)?;
        let answer = read_line(&self.predecessor).map_err(exchange)?;
        if answer != "ok" {
            return Err(HandoffError::Protocol(format!(
                "pid {pid} answered {answer:?} to ready"
            )));
        }
        Ok(())
    }
}

/// Ask the airlock serving `path` for its sockets. `None` when nobody serves it (no file,
/// or a file left by a process that is gone, which is removed).
pub fn take_over(path: &Path) -> Result<Option<Inherited>, HandoffError> {
    let connect = |source| HandoffError::Connect {
        path: path.display().to_string(),
        source,
    };
    let stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(connect)?;
            return Ok(None);
        }
        Err(e) => return Err(connect(e)),
    };
    stream.set_read_timeout(Some(PATIENCE)).map_err(connect)?;
    stream.set_write_timeout(Some(PATIENCE)).map_err(connect)?;
    (&stream)
        .write_all(format!("{HELLO} pid={}\n", std::process::id()).as_bytes())
        .map_err(connect)?;
    let (line, fds) = receive(&stream).map_err(connect)?;
    let protocol = |what: &str| HandoffError::Protocol(format!("{what}: {line}"));
    let description: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| protocol("not a description"))?;
    let pid = description["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| protocol("no pid"))?;
    let addr = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<SocketAddr>().ok());
    let mut named = Vec::new();
    for listener in description["listeners"].as_array().into_iter().flatten() {
        let (Some(name), Some(at)) = (listener["name"].as_str(), addr(&listener["addr"])) else {
            return Err(protocol("a listener without a name or address"));
        };
        named.push((name.to_string(), at));
    }
    let admin = match &description["admin"] {
        serde_json::Value::Null => None,
        value => Some(addr(value).ok_or_else(|| protocol("an admin address"))?),
    };
    if fds.len() != named.len() + usize::from(admin.is_some()) {
        return Err(protocol(&format!("{} sockets came with", fds.len())));
    }
    let mut fds = fds.into_iter().map(|fd| {
        let socket = TcpListener::from(fd);
        socket.set_nonblocking(true)?;
        Ok(socket)
    });
    let exchange = |source| HandoffError::Exchange { pid, source };
    let mut listeners = Vec::new();
    for (name, addr) in named {
        let socket = fds.next().expect("counted").map_err(exchange)?;
        listeners.push(Described { name, addr, socket });
    }
    let admin = match admin {
        Some(addr) => Some((addr, fds.next().expect("counted").map_err(exchange)?)),
        None => None,
    };
    Ok(Some(Inherited {
        listeners,
        admin,
        predecessor: stream,
        pid,
    }))
}

/// Serve one successor that connected on `stream`: send `offered`, and wait for it to be
/// ready. `Ok(pid)` once it is: this process has said `ok` and must stop accepting.
pub fn hand_over(stream: UnixStream, offered: Offered) -> Result<u32, HandoffError> {
    let protocol = HandoffError::Protocol;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    let hello = read_line(&stream)?;
    let pid = hello
        .strip_prefix(HELLO)
        .and_then(|rest| rest.trim().strip_prefix("pid="))
        .and_then(|pid| pid.parse::<u32>().ok())
        .ok_or_else(|| protocol(format!("not a successor's greeting: {hello:?}")))?;
    let exchange = |source| HandoffError::Exchange { pid, source };
    let count = offered.listeners.len() + usize::from(offered.admin.is_some());
    if count > MAX_SOCKETS {
        return Err(protocol(format!(
            "{count} sockets are more than one handoff carries ({MAX_SOCKETS})"
        )));
    }
    let description = serde_json::json!({
        "pid": std::process::id(),
        "listeners": offered.listeners.iter().map(|l| serde_json::json!({
            "name": l.name,
            "addr": l.addr.to_string(),
        })).collect::<Vec<_>>(),
        "admin": offered.admin.as_ref().map(|(addr, _)| addr.to_string()),
    });
    let fds: Vec<_> = offered
        .listeners
        .iter()
        .map(|l| l.socket.as_fd())
        .chain(offered.admin.iter().map(|(_, fd)| fd.as_fd()))
        .collect();
    send(&stream, &format!("{description}\n"), &fds).map_err(exchange)?;
    let answer = read_line(&stream).map_err(exchange)?;
    if answer != "ready" {
        return Err(protocol(format!("pid {pid} answered {answer:?}")));
    }
    (&stream).write_all(b"ok\n").map_err(exchange)?;
    Ok(pid)
}

/// A copy of the descriptor of `socket`, while anything still holds the socket (a
/// listener's accept loop holds its one strong reference, so a stopped listener is not
/// kept open by this).
pub fn descriptor<S: AsFd>(socket: &std::sync::Weak<S>) -> io::Result<Option<OwnedFd>> {
    socket
        .upgrade()
        .map(|socket| socket.as_fd().try_clone_to_owned())
        .transpose()
}

/// Send `line` with `fds` attached.
fn send(stream: &UnixStream, line: &str, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("the descriptors do not fit one message"));
    }
    let bytes = line.as_bytes();
    let sent = rustix::net::sendmsg(
        stream,
        &[io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // The descriptors went with the first byte; the rest of the line follows plainly.
    let mut writer = stream;
    writer.write_all(&bytes[sent..])
}

/// Receive one line and the descriptors attached to it.
fn receive(stream: &UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS + 3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 64 * 1024];
    let got = rustix::net::recvmsg(
        stream,
        &mut [io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::other(
            "more descriptors came than a handoff carries",
        ));
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the connection",
        ));
    }
    let mut line =
        String::from_utf8(buf[..got.bytes].to_vec()).map_err(|_| io::Error::other("not UTF-8"))?;
    match line.strip_suffix('\n') {
        Some(whole) => line.truncate(whole.len()),
        None => line.push_str(&read_line(stream)?),
    }
    Ok((line, fds))
}

/// One line, without its newline; end of stream is an error.
fn read_line(stream: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    // Byte by byte: nothing may be read past the line (descriptors ride on what follows).
    let mut byte = [0u8; 1];
    loop {
        match io::Read::read(&mut &*stream, &mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other process closed the connection",
                ));
            }
            _ if byte[0] == b'\n' => break,
            _ if line.len() >= 4096 => return Err(io::Error::other("a line over 4 KiB")),
            _ => line.push(byte[0]),
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::other("not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn offered(names: &[(&str, &str)], admin: bool) -> (Offered, Vec<SocketAddr>) {
        let mut bound = Vec::new();
        let listeners = names
            .iter()
            .map(|(name, addr)| {
                let socket = listener();
                bound.push(socket.local_addr().unwrap());
                Described {
                    name: name.to_string(),
                    addr: addr.parse().unwrap(),
                    socket: OwnedFd::from(socket),
                }
            })
            .collect();
        let admin = admin.then(|| {
            let socket = listener();
            bound.push(socket.local_addr().unwrap());
            ("127.0.0.1:0".parse().unwrap(), OwnedFd::from(socket))
        });
        (Offered { listeners, admin }, bound)
    }

    /// Both sides of a handoff over a socket pair: the successor's view, and the
    /// predecessor's result once the successor commits (or is dropped).
    fn exchange(
        offered: Offered,
        commit: bool,
    ) -> (Vec<(String, SocketAddr)>, Result<u32, HandoffError>) {
        let dir =
            std::env::temp_dir().join(format!("airlock-handoff-{}-{commit}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let predecessor = std::thread::spawn(move || {
            let (stream, _) = server.accept().unwrap();
            hand_over(stream, offered)
        });
        let mut inherited = take_over(&path).unwrap().expect("a predecessor");
        assert_eq!(inherited.pid(), std::process::id());
        let mut seen: Vec<(String, SocketAddr)> = inherited
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.socket.local_addr().unwrap()))
            .collect();
        if let Some(admin) = inherited.take_admin("127.0.0.1:0".parse().unwrap()) {
            seen.push(("admin".into(), admin.local_addr().unwrap()));
        }
        if commit {
            inherited.commit().unwrap();
        } else {
            drop(inherited);
        }
        let result = predecessor.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (seen, result)
    }

    #[test]
    fn the_successor_gets_the_very_sockets_in_order_and_the_predecessor_its_pid() {
        let (offer, bound) = offered(&[("a", "127.0.0.1:0"), ("b", "127.0.0.1:0")], true);
        let (seen, result) = exchange(offer, true);
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "admin"]);
        let addrs: Vec<SocketAddr> = seen.iter().map(|(_, a)| *a).collect();
        assert_eq!(addrs, bound, "the same bound sockets, not new ones");
        assert_eq!(result.unwrap(), std::process::id());
    }

    #[test]
    fn a_successor_that_goes_away_before_ready_is_an_error_for_the_predecessor() {
        let (offer, _) = offered(&[("a", "127.0.0.1:0")], false);
        let (_, result) = exchange(offer, false);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("closed the connection"), "{error}");
    }

    #[test]
    fn a_greeting_that_is_not_a_successors_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&theirs).write_all(b"GET / HTTP/1.1\n").unwrap();
        let (offer, _) = offered(&[], false);
        let error = hand_over(ours, offer).unwrap_err().to_string();
        assert!(error.contains("not a successor's greeting"), "{error}");
    }

    #[test]
    fn listeners_match_by_address_and_by_name_too_where_the_port_is_any() {
        let socket = |name: &str, addr: &str| Described {
            name: name.into(),
            addr: addr.parse().unwrap(),
            socket: listener(),
        };
        let (_, predecessor) = UnixStream::pair().unwrap();
        let mut inherited = Inherited {
            listeners: vec![
                socket("public", "127.0.0.1:8080"),
                socket("any", "127.0.0.1:0"),
            ],
            admin: None,
            predecessor,
            pid: 1,
        };
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(
            inherited
                .take_listener("other", addr("127.0.0.1:0"))
                .is_none()
        );
        assert!(
            inherited
                .take_listener("any", addr("127.0.0.1:0"))
                .is_some()
        );
        assert!(
            inherited
                .take_listener("renamed", addr("127.0.0.1:8080"))
                .is_some()
        );
        assert!(inherited.listeners.is_empty());
        assert!(inherited.take_admin(addr("127.0.0.1:9900")).is_none());
    }
}
