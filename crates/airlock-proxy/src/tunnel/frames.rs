//! Where WebSocket frames begin and end in one direction of a tunnel (RFC 6455 §5.2),
//! from frame headers alone: payload bytes are counted and skipped, never copied or
//! unmasked. A frame of proxy's own (a close frame on a drain) may only go out at a
//! boundary, so that it never lands inside a frame of the peer's.
//!
//! A header arriving in pieces is kept (14 bytes at most); nothing else is buffered,
//! whatever lengths the headers announce. A length with its top bit set, which RFC 6455
//! forbids, means the stream is not WebSocket frames: the tracker gives up ("lost") and
//! the tunnel is closed without a close frame when it has to be.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use super::websocket::{Checker, Header, PeerClose, code};

/// The longest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEAD: usize = 14;

/// Opcodes of close, ping and pong frames.
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The frame boundaries of one direction.
#[derive(Debug, Default)]
pub(super) struct Frames {
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A frame header that has arrived in part.
    head: [u8; MAX_HEAD],
    head_len: u8,
    /// The bytes stopped looking like WebSocket frames; no boundary is known any more.
    lost: bool,
    /// A close frame has passed: nothing but its payload may follow (RFC 6455 §5.5.1).
    saw_close: bool,
    /// On a frame-aware route: the rules each header is checked against, and counts.
    aware: Option<Box<Aware>>,
}

/// A frame-aware direction's state beyond the boundaries.
#[derive(Debug)]
pub(super) struct Aware {
    pub checker: Checker,
    /// The payload of a close frame from this side, as it arrives (allocated when one
    /// comes), and when its header came.
    pub close: Option<Box<PeerClose>>,
    pub close_at: Option<Instant>,
    /// The frame whose payload is passing is a data frame.
    in_data: bool,
    /// The payload of airlock's ping, while it waits for the pong.
    pub pong_expected: Option<[u8; 8]>,
}

/// What [`Frames::check`] found in a read.
#[derive(Debug, Default)]
pub(super) struct Check {
    /// Bytes of data frames passed (control frames alone do not keep a tunnel alive).
    pub data: bool,
    /// A frame broke the rules: where its header starts in the read, the close code, and
    /// whether the header began in an earlier read (so its first bytes were relayed).
    pub violation: Option<(usize, u16, bool)>,
    /// The pong to airlock's ping: where it starts in the read and its length. Checking
    /// stopped after it.
    pub pong: Option<(usize, usize)>,
}

impl Frames {
    /// A tracker that also checks every frame against `checker`.
    pub(super) fn checked(checker: Checker) -> Self {
        Self {
            aware: Some(Box::new(Aware {
                checker,
                close: None,
                close_at: None,
                in_data: false,
                pong_expected: None,
            })),
            ..Self::default()
        }
    }

    pub(super) fn aware(&self) -> Option<&Aware> {
        self.aware.as_deref()
    }

    pub(super) fn aware_mut(&mut self) -> Option<&mut Aware> {
        self.aware.as_deref_mut()
    }

    /// Follow `bytes` on a frame-aware route, checking each header; stops at the first
    /// frame that breaks the rules. (Without rules it only follows them.)
    pub(super) fn check(&mut self, bytes: &[u8]) -> Check {
        let mut out = Check::default();
        let Some(mut aware) = self.aware.take() else {
            self.track(bytes);
            return out;
        };
        let mut at = 0;
        while at < bytes.len() && !self.lost {
            let rest = &bytes[at..];
            if self.payload_left > 0 {
                let n = self.payload_left.min(rest.len() as u64) as usize;
                out.data |= aware.in_data;
                if let Some(close) = &mut aware.close
                    && close.wanting()
                {
                    close.take(&rest[..n]);
                }
                self.payload_left -= n as u64;
                at += n;
                continue;
            }
            let began_here = self.head_len == 0;
            let start = at;
            let whole = if began_here && rest.len() >= 2 {
                Some(head_len(rest)).filter(|n| rest.len() >= *n)
            } else {
                None
            };
            let header = match whole {
                // Most headers arrive whole: read them where they are.
                Some(n) => {
                    at += n;
                    let header = parse(&rest[..n]);
                    self.follow(&header.0);
                    header
                }
                None => {
                    at += self.take_head(rest);
                    if self.head_len != 0 {
                        break; // the rest of the header comes in the next read
                    }
                    parse(&self.head)
                }
            };
            let verdict = if self.lost {
                Err(code::PROTOCOL_ERROR)
            } else {
                aware.checker.check(&header.0)
            };
            if let Err(code) = verdict {
                out.violation = Some((start, code, !began_here));
                // Nothing more is checked, but boundaries are still followed: the side's
                // close frame is awaited.
                self.aware = Some(aware);
                self.track(&bytes[at..]);
                return out;
            }
            // The answer to airlock's ping, whole in this read: it goes no further.
            if header.0.opcode == PONG
                && header.0.len == 8
                && began_here
                && bytes.len() - at >= 8
                && let Some(expected) = aware.pong_expected
            {
                let key = header.1;
                let payload = &bytes[at..at + 8];
                if payload
                    .iter()
                    .enumerate()
                    .all(|(i, b)| b ^ key[i % 4] == expected[i])
                {
                    aware.pong_expected = None;
                    self.payload_left = 0;
                    at += 8;
                    out.pong = Some((start, at - start));
                    break;
                }
            }
            aware.in_data = header.0.opcode <= 0x2;
            out.data |= aware.in_data;
            if header.0.opcode == CLOSE && aware.close_at.is_none() {
                let mut close = Box::<PeerClose>::default();
                close.start(header.0.len, header.1);
                aware.close = Some(close);
                aware.close_at = Some(Instant::now());
            }
        }
        self.aware = Some(aware);
        out
    }

    /// Between two frames: a frame of the proxy's own may be sent here.
    pub(super) fn at_boundary(&self) -> bool {
        !self.lost && self.payload_left == 0 && self.head_len == 0
    }

    /// The bytes are not WebSocket frames.
    pub(super) fn lost(&self) -> bool {
        self.lost
    }

    /// A close frame has been seen in this direction (header only: its payload may still
    /// be on its way).
    pub(super) fn saw_close(&self) -> bool {
        self.saw_close
    }

    /// Follow `bytes`, the next bytes of the stream. (The relay's hot path: a read of one
    /// whole frame takes one pass through the loop and a return.)
    pub(super) fn track(&mut self, mut bytes: &[u8]) {
        loop {
            let left = bytes.len() as u64;
            if self.payload_left >= left {
                self.payload_left -= left;
                return;
            }
            bytes = &bytes[self.payload_left as usize..];
            self.payload_left = 0;
            if self.lost {
                return;
            }
            // Most headers arrive whole: read them where they are.
            if self.head_len == 0 && bytes.len() >= 2 {
                let len = head_len(bytes);
                if bytes.len() >= len {
                    self.parse_head(&bytes[..len]);
                    bytes = &bytes[len..];
                    continue;
                }
            }
            let taken = self.take_head(bytes);
            bytes = &bytes[taken..];
        }
    }

    /// Follow `bytes` up to the first frame boundary in them, and say where it is
    /// (0 when the stream is at one already). `None`: no boundary in them; all were
    /// followed.
    pub(super) fn track_to_boundary(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            if self.lost {
                return None;
            }
            if self.at_boundary() {
                return Some(at);
            }
            let rest = &bytes[at..];
            if rest.is_empty() {
                return None;
            }
            if self.payload_left > 0 {
                let n = self.payload_left.min(rest.len() as u64);
                self.payload_left -= n;
                at += n as usize;
                continue;
            }
            at += self.take_head(rest);
        }
    }

    /// Take header bytes from the start of `bytes`; parse the header once it is whole.
    /// Returns how many bytes were taken.
    fn take_head(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            let have = self.head_len as usize;
            // The first two bytes say how long the header is.
            let want = if have < 2 { 2 } else { head_len(&self.head) };
            let n = (want - have).min(bytes.len() - taken);
            self.head[have..have + n].copy_from_slice(&bytes[taken..taken + n]);
            self.head_len += n as u8;
            taken += n;
            if have + n < want {
                return taken;
            }
            if want == 2 && head_len(&self.head) > 2 {
                continue;
            }
            self.finish_head();
            return taken;
        }
    }

    fn finish_head(&mut self) {
        let head = self.head;
        self.head_len = 0;
        self.parse_head(&head);
    }

    /// Take in a whole header: [`parse`] and [`Frames::follow`] in one, reading only the
    /// length and opcode (the plain route's per-message path).
    #[inline]
    fn parse_head(&mut self, head: &[u8]) {
        let len = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        if len >> 63 != 0 {
            // RFC 6455 §5.2: "the most significant bit MUST be 0".
            self.lost = true;
            return;
        }
        if head[0] & 0x0f == CLOSE {
            self.saw_close = true;
        }
        self.payload_left = len;
    }
}

impl Frames {
    /// Take in a header [`parse`] read.
    fn follow(&mut self, header: &Header) {
        if header.len >> 63 != 0 {
            self.lost = true;
            return;
        }
        if header.opcode == CLOSE {
            self.saw_close = true;
        }
        self.payload_left = header.len;
    }
}

/// A whole header's fields and masking key.
fn parse(head: &[u8]) -> (Header, [u8; 4]) {
    let len = match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
        n => u64::from(n),
    };
    let masked = head[1] & 0x80 != 0;
    let key = if masked {
        let at = head_len(head) - 4;
        head[at..at + 4].try_into().expect("4 bytes")
    } else {
        [0; 4]
    };
    let header = Header {
        fin: head[0] & 0x80 != 0,
        rsv: (head[0] >> 4) & 0x7,
        opcode: head[0] & 0x0f,
        masked,
        len,
    };
    (header, key)
}

/// The length of a header from its first two bytes.
#[inline]
fn head_len(first: &[u8]) -> usize {
    let masked = first[1] & 0x80 != 0;
    let extended = match first[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if masked { 4 } else { 0 }
}

/// A close frame with `code` and a short `reason` (at most 123 bytes), masked when it goes
/// to an upstream (a client's frames are masked, RFC 6455 §5.3).
pub(super) fn close_frame(code: u16, reason: &str, masked: bool) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let len = 2 + reason.len();
    let mut frame = BytesMut::with_capacity(2 + 4 + len);
    frame.put_u8(0x80 | CLOSE);
    let mut payload = Vec::with_capacity(len);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    if masked {
        frame.put_u8(0x80 | len as u8);
        let key: [u8; 4] = rand::random();
        frame.put_slice(&key);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    } else {
        frame.put_u8(len as u8);
    }
    frame.put_slice(&payload);
    frame.freeze()
}

/// airlock's ping to the client: unmasked, with an 8-byte payload the pong must echo.
pub(super) fn ping_frame(payload: [u8; 8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(10);
    frame.put_u8(0x80 | PING);
    frame.put_u8(8);
    frame.put_slice(&payload);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with `opcode` and `len` payload bytes, masked or not.
    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let mask = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(mask | len as u8),
            126..=0xffff => {
                f.push(mask | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAB, len));
        f
    }

    /// A small deterministic generator: the same cases on every run.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// Where frames end in `stream`.
    fn ends(frames: &[Vec<u8>]) -> Vec<usize> {
        frames
            .iter()
            .scan(0, |end, f| {
                *end += f.len();
                Some(*end)
            })
            .collect()
    }

    /// Small, medium and large frames of every header shape, masked and not.
    fn sample() -> Vec<Vec<u8>> {
        vec![
            frame(0x1, 5, true),
            frame(0x9, 0, false),
            frame(0x2, 200, true),
            frame(0x0, 125, false),
            frame(0x2, 70_000, false),
            frame(0x1, 126, true),
            frame(0x8, 2, true),
        ]
    }

    #[test]
    fn boundaries_are_found_however_the_bytes_are_cut() {
        let frames = sample();
        let stream: Vec<u8> = frames.concat();
        let ends = ends(&frames);
        // Every cut size from one byte at a time up: the boundaries found at each chunk's
        // end are exactly the frame ends.
        for chunk in [1, 2, 3, 5, 7, 13, 64, 1000, 16 * 1024, stream.len()] {
            let mut t = Frames::default();
            let mut found = Vec::new();
            for (i, piece) in stream.chunks(chunk).enumerate() {
                t.track(piece);
                let end = i * chunk + piece.len();
                if t.at_boundary() {
                    found.push(end);
                }
            }
            let expected: Vec<usize> = ends
                .iter()
                .copied()
                .filter(|e| e % chunk == 0 || *e == stream.len())
                .collect();
            assert_eq!(found, expected, "chunk size {chunk}");
            assert!(t.saw_close());
        }
    }

    #[test]
    fn track_to_boundary_stops_at_each_frame_end() {
        let frames = sample();
        let stream: Vec<u8> = frames.concat();
        let mut expected = vec![0];
        expected.extend(ends(&frames));
        for chunk in [1, 3, 100, 16 * 1024, stream.len()] {
            let mut t = Frames::default();
            let mut found: Vec<usize> = Vec::new();
            for (i, piece) in stream.chunks(chunk).enumerate() {
                let mut at = 0;
                while let Some(n) = t.track_to_boundary(&piece[at..]) {
                    at += n;
                    let pos = i * chunk + at;
                    if found.last() != Some(&pos) {
                        found.push(pos);
                    }
                    if at == piece.len() {
                        break;
                    }
                    // Step into the next frame so the search moves on.
                    t.track(&piece[at..at + 1]);
                    at += 1;
                }
            }
            if t.at_boundary() && found.last() != Some(&stream.len()) {
                found.push(stream.len());
            }
            assert_eq!(found, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_length_with_the_top_bit_set_is_refused_not_awaited() {
        let mut t = Frames::default();
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&(1u64 << 63).to_be_bytes());
        t.track(&head);
        assert!(t.lost());
        assert!(!t.at_boundary());
        t.track(&[0; 100]);
        assert_eq!(t.track_to_boundary(&[0; 10]), None);
    }

    #[test]
    fn the_largest_legal_length_is_only_counted() {
        let mut t = Frames::default();
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        t.track(&head);
        t.track(&[0; 16 * 1024]);
        assert!(!t.lost());
        assert!(!t.at_boundary());
        assert_eq!(t.payload_left, (u64::MAX >> 1) - 16 * 1024);
    }

    #[test]
    fn random_and_truncated_input_never_panics_nor_buffers() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2_000 {
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut t = Frames::default();
            let mut at = 0;
            while at < bytes.len() {
                let n = 1 + (next() % 40) as usize;
                let piece = &bytes[at..(at + n).min(bytes.len())];
                if next().is_multiple_of(2) {
                    t.track(piece);
                } else if let Some(k) = t.track_to_boundary(piece) {
                    assert!(k <= piece.len());
                    t.track(&piece[k..]);
                }
                assert!(t.head_len as usize <= MAX_HEAD);
                at += n;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn random_input_through_the_checks_never_panics_nor_buffers() {
        use super::super::websocket::Rules;
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        for round in 0..2_000 {
            let rules = std::sync::Arc::new(Rules {
                max_message: next() % 5_000,
                max_frame: next() % 3_000,
                message_rate: Some((std::time::Duration::from_millis(1), 1 + round % 7)),
                ping: None,
            });
            let from_client = round % 2 == 0;
            let mut t = Frames::checked(Checker::new(rules, from_client, (round % 8) as u8));
            // Well-formed frames most of the time, then random bytes: every path is taken.
            let mut bytes = Vec::new();
            for _ in 0..(next() % 6) {
                let len = (next() % 200) as usize;
                bytes.push(0x80 | (next() % 3) as u8);
                bytes.push(if from_client { 0x80 } else { 0 } | len.min(125) as u8);
                if from_client {
                    bytes.extend_from_slice(&[9, 8, 7, 6]);
                }
                bytes.extend(std::iter::repeat_n(0x55, len.min(125)));
            }
            bytes.extend((0..next() % 100).map(|_| next() as u8));
            let mut at = 0;
            while at < bytes.len() {
                let n = 1 + (next() % 50) as usize;
                let piece = &bytes[at..(at + n).min(bytes.len())];
                let check = t.check(piece);
                if let Some((start, code, _)) = check.violation {
                    assert!(start <= piece.len());
                    assert!(matches!(code, 1002 | 1008 | 1009), "{code}");
                }
                assert!(t.head_len as usize <= MAX_HEAD);
                at += n;
            }
        }
    }

    #[test]
    fn close_frames_are_well_formed_both_ways() {
        let plain = close_frame(1001, "going away", false);
        assert_eq!(&plain[..4], &[0x88, 12, 0x03, 0xE9]);
        assert_eq!(&plain[4..], b"going away");

        let masked = close_frame(1012, "", true);
        assert_eq!(masked[0], 0x88);
        assert_eq!(masked[1], 0x80 | 2);
        let key = &masked[2..6];
        let code = [masked[6] ^ key[0], masked[7] ^ key[1]];
        assert_eq!(u16::from_be_bytes(code), 1012);

        let mut t = Frames::default();
        t.track(&masked);
        assert!(t.at_boundary() && t.saw_close());
    }
}
