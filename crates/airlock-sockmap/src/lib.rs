//! Blind tunnels relayed inside the Linux kernel.
//!
//! After a WebSocket (or any upgrade) handshake, a tunnel that needs nothing more from
//! the proxy can have its bytes moved from one socket to the other by the kernel, never
//! copied through user space: both sockets go into a BPF `sockhash`, and a verdict
//! program attached to it ([`program`]) redirects each chunk a socket receives to the
//! egress of its peer. airlock keeps the sockets (for their close, half-close and
//! errors) and reads the program's counters (bytes each way, the last moment anything
//! moved) for its idle timeout, logs and metrics.
//!
//! Bytes stay in order and are never dropped. Whatever a socket received before it was
//! spliced is pushed through the program at once ([`Splicer::splice`]); a chunk the
//! program cannot redirect (its peer not in the map yet) is left readable on its socket,
//! and every later chunk is left there too until the caller has read and forwarded those
//! ([`Splice::forwarded`]). The caller reads a spliced socket only when it is readable.
//!
//! Needs `CAP_BPF` and `CAP_NET_ADMIN` (or root) and Linux 5.13 or later
//! (`BPF_SK_SKB_VERDICT`); [`Splicer::new`] says why when it cannot.

// System calls (`bpf`, socket options) are the only unsafe code, each with its `SAFETY`
// note, in `bpf` and `socket`.
#![deny(unsafe_code)]

mod bpf;
mod program;
mod socket;

use socket::{cookie, kick, written};

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// The license the program is loaded under (the kernel asks; none of its helpers needs
/// the GPL).
const LICENSE: &str = "Apache-2.0";

/// A tunnel entry, as the program reads and updates it (`program::PEER` etc.).
const ENTRY: usize = 32;

/// The maps and the program that splices their sockets.
pub struct Splicer {
    maps: Arc<Maps>,
    capacity: u32,
}

struct Maps {
    /// Spliced sockets by cookie.
    socks: OwnedFd,
    /// A tunnel entry per spliced socket, by cookie: its peer, counters, passed bytes.
    tunnels: OwnedFd,
    /// Per socket, the passed bytes the caller has forwarded.
    forwarded: OwnedFd,
    /// Attached to `socks`; kept open for clarity (the attachment holds it too).
    _program: OwnedFd,
}

impl std::fmt::Debug for Splicer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splicer")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Splicer {
    /// Maps for `capacity` tunnels, and the program attached to them. Fails, saying why,
    /// without the privilege, on a kernel without sockmap verdicts, or when the verifier
    /// refuses the program.
    pub fn new(capacity: u32) -> Result<Self, io::Error> {
        let sockets = capacity.saturating_mul(2).max(2);
        let what = |what: &'static str| {
            move |e: io::Error| {
                let hint = match e.raw_os_error() {
                    Some(libc::EPERM) => " (needs CAP_BPF and CAP_NET_ADMIN, or root)",
                    Some(libc::EINVAL) => " (needs Linux 5.13 or later)",
                    _ => "",
                };
                io::Error::new(e.kind(), format!("{what}: {e}{hint}"))
            }
        };
        let socks = bpf::map_create(bpf::MAP_TYPE_SOCKHASH, 8, 8, sockets)
            .map_err(what("cannot create the BPF sockhash"))?;
        let tunnels = bpf::map_create(bpf::MAP_TYPE_HASH, 8, ENTRY as u32, sockets)
            .map_err(what("cannot create the BPF tunnel map"))?;
        let forwarded = bpf::map_create(bpf::MAP_TYPE_HASH, 8, 8, sockets)
            .map_err(what("cannot create the BPF tunnel map"))?;
        let insns = program::verdict(
            socks.as_raw_fd(),
            tunnels.as_raw_fd(),
            forwarded.as_raw_fd(),
        );
        let program =
            bpf::prog_load(&insns, LICENSE).map_err(what("cannot load the BPF verdict program"))?;
        bpf::attach_verdict(socks.as_fd(), program.as_fd())
            .map_err(what("cannot attach the BPF verdict program"))?;
        Ok(Self {
            maps: Arc::new(Maps {
                socks,
                tunnels,
                forwarded,
                _program: program,
            }),
            capacity,
        })
    }

    /// Splice two connected TCP sockets: from now on what `a` receives leaves through
    /// `b` and the reverse, in the kernel. Whatever the caller read from them and has not
    /// forwarded must be written to the other socket before this. Undone when the
    /// [`Splice`] is dropped (and by closing either socket).
    pub fn splice(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<Splice> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        let splice = Splice {
            maps: self.maps.clone(),
            cookies: [ca, cb],
            base: [written(a)?, written(b)?],
        };
        let tunnels = self.maps.tunnels.as_fd();
        for (own, peer) in [(ca, cb), (cb, ca)] {
            let mut entry = [0u8; ENTRY];
            entry[..8].copy_from_slice(&peer.to_ne_bytes());
            bpf::update(tunnels, &own.to_ne_bytes(), &entry, bpf::ANY)?;
        }
        let socks = self.maps.socks.as_fd();
        bpf::update(
            socks,
            &ca.to_ne_bytes(),
            &(a.as_raw_fd() as u64).to_ne_bytes(),
            bpf::ANY,
        )?;
        bpf::update(
            socks,
            &cb.to_ne_bytes(),
            &(b.as_raw_fd() as u64).to_ne_bytes(),
            bpf::ANY,
        )?;
        // Bytes that arrived before the sockets were in the map wait in their receive
        // queues until the next arrival runs the program over them; a receive low-water
        // mark, set, signals the socket as if data had just arrived.
        kick(a)?;
        kick(b)?;
        Ok(splice)
    }

    /// Sockets and tunnel entries in the maps now (for checks that nothing leaks).
    pub fn entries(&self) -> io::Result<(usize, usize)> {
        Ok((
            bpf::count(self.maps.socks.as_fd())?,
            bpf::count(self.maps.tunnels.as_fd())?,
        ))
    }
}

/// One of a splice's two sockets, in the order given to [`Splicer::splice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    A = 0,
    B = 1,
}

impl End {
    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// Two sockets spliced together; undone when dropped.
pub struct Splice {
    maps: Arc<Maps>,
    cookies: [u64; 2],
    /// Bytes each socket had been given to send before the splice.
    base: [u64; 2],
}

/// What one end of a splice has received since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Received {
    /// Bytes, redirected or passed.
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when its last chunk arrived; 0 if none has.
    pub last: u64,
    /// Of `bytes`, those left readable on the socket for the caller to forward.
    pub passed: u64,
}

impl Splice {
    /// What `end` has received since it was spliced.
    pub fn received(&self, end: End) -> io::Result<Received> {
        let mut entry = [0u8; ENTRY];
        let key = self.cookies[end as usize].to_ne_bytes();
        bpf::lookup(self.maps.tunnels.as_fd(), &key, &mut entry)?;
        let field = |at: usize| u64::from_ne_bytes(entry[at..at + 8].try_into().expect("8"));
        Ok(Received {
            bytes: field(8),
            last: field(16),
            passed: field(24),
        })
    }

    /// The caller has read `total` passed bytes from `end` so far and written them all
    /// to the other socket: the program may redirect again once that is all it passed.
    pub fn forwarded(&self, end: End, total: u64) -> io::Result<()> {
        let key = self.cookies[end as usize].to_ne_bytes();
        bpf::update(
            self.maps.forwarded.as_fd(),
            &key,
            &total.to_ne_bytes(),
            bpf::ANY,
        )
    }

    /// Whether everything `end` has received has been handed to the other socket (`to`,
    /// which must be that socket) for sending: before passing on `end`'s half-close, so
    /// that it cannot overtake bytes still on their way through the kernel.
    pub fn delivered(&self, end: End, to: BorrowedFd<'_>) -> io::Result<bool> {
        let received = self.received(end)?.bytes;
        let sent = written(to)?.saturating_sub(self.base[end.other() as usize]);
        Ok(sent >= received)
    }
}

impl Drop for Splice {
    fn drop(&mut self) {
        for cookie in self.cookies {
            let key = cookie.to_ne_bytes();
            // Absent when the socket was closed first (the kernel removes it then).
            let _ = bpf::delete(self.maps.socks.as_fd(), &key);
            let _ = bpf::delete(self.maps.tunnels.as_fd(), &key);
            let _ = bpf::delete(self.maps.forwarded.as_fd(), &key);
        }
    }
}
