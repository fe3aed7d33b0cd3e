//! The socket options and ioctls the splicer reads and sets.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The socket's cookie: its id in the maps, unique while the system runs.
pub(crate) fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a writable u64 and `len` says so.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Make the socket signal readable data now if it has any (see [`crate::Splicer::splice`]).
pub(crate) fn kick(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a readable c_int and the length says so.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes the socket has been given to send since it connected: those acknowledged
/// (`tcpi_bytes_acked`) and those still queued (`SIOCOUTQ`: unsent and unacknowledged).
pub(crate) fn written(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that many.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // struct tcp_info: tcpi_bytes_acked is the u64 at byte 120 (Linux 4.1 and later).
    const BYTES_ACKED: usize = 120;
    if (len as usize) < BYTES_ACKED + 8 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "tcp_info has no tcpi_bytes_acked",
        ));
    }
    let acked = u64::from_ne_bytes(info[BYTES_ACKED..BYTES_ACKED + 8].try_into().expect("8"));
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acked + queued.max(0) as u64)
}
