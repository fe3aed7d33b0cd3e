//! The few `bpf(2)` commands the splicer needs, on `union bpf_attr` laid out by hand
//! (include/uapi/linux/bpf.h): maps, a program, its attachment, and map elements.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::program::Insn;

const MAP_CREATE: libc::c_int = 0;
const MAP_LOOKUP_ELEM: libc::c_int = 1;
const MAP_UPDATE_ELEM: libc::c_int = 2;
const MAP_DELETE_ELEM: libc::c_int = 3;
const MAP_GET_NEXT_KEY: libc::c_int = 4;
const PROG_LOAD: libc::c_int = 5;
const PROG_ATTACH: libc::c_int = 8;

pub(crate) const MAP_TYPE_HASH: u32 = 1;
pub(crate) const MAP_TYPE_SOCKHASH: u32 = 18;
const PROG_TYPE_SK_SKB: u32 = 14;
const SK_SKB_VERDICT: u32 = 38;

/// Update flags.
pub(crate) const ANY: u64 = 0;

/// `union bpf_attr` is 144 bytes on this kernel; the kernel accepts a shorter one and
/// treats the rest as zero, and every command here fits in 128.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_int, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable `union bpf_attr` prefix of the size passed, and
    // every pointer stored in it (set by the callers below) points to memory that lives
    // until this call returns, with the sizes the kernel reads from the attribute.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd(r: libc::c_long) -> OwnedFd {
    // SAFETY: the commands that return a file descriptor return a new one, owned by no
    // one else.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// A map of `max_entries` elements.
pub(crate) fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries);
    bpf(MAP_CREATE, &mut attr).map(fd)
}

/// Load an `sk_skb` program; on a refusal, the verifier's log is in the error.
pub(crate) fn prog_load(insns: &[Insn], license: &str) -> io::Result<OwnedFd> {
    let license = std::ffi::CString::new(license).expect("no NUL in the license");
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = Attr::new();
    attr.u32(0, PROG_TYPE_SK_SKB)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1) // log_level
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, SK_SKB_VERDICT); // expected_attach_type
    attr.0[48..56].copy_from_slice(b"airlock\0");
    match bpf(PROG_LOAD, &mut attr) {
        Ok(r) => Ok(fd(r)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(
                e.kind(),
                format!("{e}; the verifier said: {}", log.trim()),
            ))
        }
    }
}

/// Attach `prog` to `map` as its sockets' verdict program.
pub(crate) fn attach_verdict(map: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32(0, map.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, SK_SKB_VERDICT);
    bpf(PROG_ATTACH, &mut attr).map(drop)
}

fn elem(map: BorrowedFd<'_>, key: &[u8], value: Option<&mut [u8]>, flags: u64) -> Attr {
    let mut attr = Attr::new();
    attr.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.map_or(0, |v| v.as_mut_ptr() as u64))
        .u64(24, flags);
    attr
}

/// Set `map[key] = value`. The sizes must be the map's.
pub(crate) fn update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    // The kernel only reads the value; the attribute field is not const.
    let mut value = value.to_vec();
    bpf(
        MAP_UPDATE_ELEM,
        &mut elem(map, key, Some(&mut value), flags),
    )
    .map(drop)
}

/// `map[key]` into `value`; `false` when absent.
pub(crate) fn lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    match bpf(MAP_LOOKUP_ELEM, &mut elem(map, key, Some(value), 0)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove `map[key]`; `false` when it was absent.
pub(crate) fn delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    match bpf(MAP_DELETE_ELEM, &mut elem(map, key, None, 0)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many elements `map` holds (its 8-byte keys walked one by one: for tests and
/// checks, not for the data path).
pub(crate) fn count(map: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n = 0;
    let mut key: Option<[u8; 8]> = None;
    loop {
        let mut next = [0u8; 8];
        let mut attr = Attr::new();
        attr.u32(0, map.as_raw_fd() as u32)
            .u64(8, key.as_ref().map_or(0, |k| k.as_ptr() as u64))
            .u64(16, next.as_mut_ptr() as u64);
        match bpf(MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {
                n += 1;
                key = Some(next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}
