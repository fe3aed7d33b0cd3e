//! Frame-aware WebSocket tunnels (a route's `websocket = {...}`): the rules of RFC 6455
//! §5 that frame headers show, the route's message limits, and what each direction
//! carried. Everything here is decided from headers; payloads are relayed as they are
//! (only a close frame's payload, at most 125 bytes, is read, for its code and reason).

use std::time::Duration;

use tokio::time::Instant;

/// A route's limits on its WebSocket messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Largest message, in payload bytes over all its frames, either way.
    pub max_message: u64,
    /// Largest frame payload, either way.
    pub max_frame: u64,
    /// Messages a client may send: one every `interval`, `burst` at once.
    pub message_rate: Option<(Duration, u32)>,
    /// airlock's pings to the client: the interval after an answer, and how long one may
    /// go unanswered.
    pub ping: Option<(Duration, Duration)>,
}

impl Rules {
    pub fn from_config(ws: &airlock_config::WebSocket) -> Self {
        let max_message = ws.max_message.as_ref().map_or(u64::MAX, |m| m.get_ref().0);
        Self {
            max_message,
            max_frame: ws.max_frame.as_ref().map_or(max_message, |f| f.get_ref().0),
            message_rate: ws.message_rate.as_ref().map(|r| {
                let r = r.get_ref();
                let burst = ws.burst.as_ref().map_or(r.count, |b| *b.get_ref());
                (r.per / r.count.max(1), burst.max(1))
            }),
            ping: ws.ping_interval.as_ref().map(|i| {
                let timeout = ws
                    .pong_timeout
                    .as_ref()
                    .map_or(airlock_config::DEFAULT_PONG_TIMEOUT, |t| *t.get_ref());
                (i.get_ref().get(), timeout.get())
            }),
        }
    }
}

/// Close codes airlock sends for a peer's frames (RFC 6455 §7.4.1).
pub mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// A frame header's fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub len: u64,
}

/// The state of one direction of a frame-aware tunnel.
#[derive(Debug)]
pub(super) struct Checker {
    rules: std::sync::Arc<Rules>,
    /// Frames from this side must be masked (a client's) or must not (a server's).
    must_mask: bool,
    /// RSV bits an extension negotiated in the handshake may set (`permessage-deflate`:
    /// RSV1).
    rsv_allowed: u8,
    /// Rate is checked on this direction (the client's).
    rate_limited: bool,
    /// A fragmented data message is under way.
    in_message: bool,
    /// Payload bytes of the message under way.
    message_len: u64,
    /// The theoretical arrival time of the next message (GCRA).
    tat: Option<Instant>,
    pub messages: u64,
    pub largest: u64,
}

impl Checker {
    pub(super) fn new(rules: std::sync::Arc<Rules>, from_client: bool, rsv_allowed: u8) -> Self {
        Self {
            rules,
            must_mask: from_client,
            rsv_allowed,
            rate_limited: from_client,
            in_message: false,
            message_len: 0,
            tat: None,
            messages: 0,
            largest: 0,
        }
    }

    /// Check a frame header; `Err(code)`: close the tunnel with `code` to this side.
    pub(super) fn check(&mut self, h: &Header) -> Result<(), u16> {
        if h.rsv & !self.rsv_allowed != 0 || h.masked != self.must_mask {
            return Err(code::PROTOCOL_ERROR);
        }
        match h.opcode {
            // Control frames: short, whole, and may come between a message's fragments.
            0x8..=0xA => {
                if h.len > 125 || !h.fin || h.rsv != 0 {
                    return Err(code::PROTOCOL_ERROR);
                }
                Ok(())
            }
            0x0 if !self.in_message => Err(code::PROTOCOL_ERROR),
            0x1 | 0x2 if self.in_message => Err(code::PROTOCOL_ERROR),
            0x0..=0x2 => {
                if h.opcode != 0 {
                    self.admit()?;
                    self.message_len = 0;
                }
                if h.len > self.rules.max_frame {
                    return Err(code::TOO_BIG);
                }
                self.message_len = self.message_len.saturating_add(h.len);
                if self.message_len > self.rules.max_message {
                    return Err(code::TOO_BIG);
                }
                // Counted once its first frame is let through.
                if h.opcode != 0 {
                    self.messages += 1;
                }
                self.in_message = !h.fin;
                if h.fin {
                    self.largest = self.largest.max(self.message_len);
                }
                Ok(())
            }
            _ => Err(code::PROTOCOL_ERROR),
        }
    }

    /// A new message against the rate (GCRA: each message moves the theoretical arrival
    /// time on by the interval; one that would put it more than `burst` intervals
    /// ahead of now is refused).
    fn admit(&mut self) -> Result<(), u16> {
        let Some((interval, burst)) = self.rules.message_rate.filter(|_| self.rate_limited) else {
            return Ok(());
        };
        let now = Instant::now();
        let tat = self.tat.map_or(now, |t| t.max(now));
        if tat > now + interval * (burst - 1) {
            return Err(code::POLICY);
        }
        self.tat = Some(tat + interval);
        Ok(())
    }
}

/// The close frame a side sent: its code (1005 when it had none) and reason.
#[derive(Debug, Clone)]
pub(super) struct PeerClose {
    payload: [u8; 125],
    len: u8,
    want: u8,
    mask: [u8; 4],
}

impl Default for PeerClose {
    fn default() -> Self {
        Self {
            payload: [0; 125],
            len: 0,
            want: 0,
            mask: [0; 4],
        }
    }
}

impl PeerClose {
    pub(super) fn start(&mut self, len: u64, mask: [u8; 4]) {
        self.want = len.min(125) as u8;
        self.len = 0;
        self.mask = mask;
    }

    /// Take payload bytes of the close frame; returns how many it still wants.
    pub(super) fn take(&mut self, bytes: &[u8]) {
        let n = (self.want - self.len).min(bytes.len() as u8) as usize;
        let at = self.len as usize;
        for (i, b) in bytes[..n].iter().enumerate() {
            self.payload[at + i] = b ^ self.mask[(at + i) % 4];
        }
        self.len += n as u8;
    }

    pub(super) fn wanting(&self) -> bool {
        self.len < self.want
    }

    /// The code and reason, once the payload is in.
    pub(super) fn code_and_reason(&self) -> (u16, String) {
        if self.len < 2 {
            return (1005, String::new());
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8_lossy(&self.payload[2..self.len as usize]).into_owned();
        (code, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rules(max_message: u64, max_frame: u64, rate: Option<(Duration, u32)>) -> Arc<Rules> {
        Arc::new(Rules {
            max_message,
            max_frame,
            message_rate: rate,
            ping: None,
        })
    }

    fn h(opcode: u8, fin: bool, len: u64, masked: bool) -> Header {
        Header {
            fin,
            rsv: 0,
            opcode,
            masked,
            len,
        }
    }

    /// A checker for the client's (`true`) or the upstream's side, with no limits.
    fn unlimited(from_client: bool) -> Checker {
        Checker::new(rules(u64::MAX, u64::MAX, None), from_client, 0)
    }

    #[test]
    fn masking_opcodes_and_fragments_follow_rfc_6455() {
        let mut c = unlimited(true);
        assert_eq!(
            c.check(&h(0x1, true, 5, false)),
            Err(1002),
            "unmasked client frame"
        );
        let mut s = unlimited(false);
        assert_eq!(
            s.check(&h(0x1, true, 5, true)),
            Err(1002),
            "masked server frame"
        );
        for op in [0x3, 0x7, 0xB, 0xF] {
            let mut c = unlimited(true);
            assert_eq!(c.check(&h(op, true, 0, true)), Err(1002), "opcode {op}");
        }
        let mut c = unlimited(true);
        assert_eq!(
            c.check(&h(0x0, true, 1, true)),
            Err(1002),
            "continuation first"
        );
        let mut c = unlimited(true);
        assert_eq!(c.check(&h(0x1, false, 1, true)), Ok(()));
        assert_eq!(
            c.check(&h(0x9, true, 4, true)),
            Ok(()),
            "a ping between fragments"
        );
        assert_eq!(
            c.check(&h(0x2, true, 1, true)),
            Err(1002),
            "new message mid-message"
        );
        let mut c = unlimited(true);
        assert_eq!(
            c.check(&h(0x9, true, 126, true)),
            Err(1002),
            "long control frame"
        );
        assert_eq!(
            c.check(&h(0x9, false, 1, true)),
            Err(1002),
            "fragmented control"
        );
        let mut rsv = h(0x1, true, 1, true);
        rsv.rsv = 0b100;
        let mut c = unlimited(true);
        assert_eq!(c.check(&rsv), Err(1002), "RSV1 without an extension");
        let mut c = Checker::new(rules(u64::MAX, u64::MAX, None), true, 0b100);
        assert_eq!(c.check(&rsv), Ok(()), "RSV1 with permessage-deflate");
    }

    #[test]
    fn sizes_count_frames_and_whole_messages() {
        let mut c = Checker::new(rules(100, 60, None), true, 0);
        assert_eq!(c.check(&h(0x2, true, 60, true)), Ok(()));
        assert_eq!(c.check(&h(0x2, true, 61, true)), Err(1009), "frame");
        let mut c = Checker::new(rules(100, 60, None), true, 0);
        assert_eq!(c.check(&h(0x1, false, 60, true)), Ok(()));
        assert_eq!(c.check(&h(0x0, true, 41, true)), Err(1009), "message");
        let mut c = Checker::new(rules(100, 60, None), true, 0);
        assert_eq!(c.check(&h(0x1, false, 60, true)), Ok(()));
        assert_eq!(c.check(&h(0x0, true, 40, true)), Ok(()));
        assert_eq!((c.messages, c.largest), (1, 100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_allows_a_burst_then_one_per_interval() {
        let rate = Some((Duration::from_millis(100), 3));
        let mut c = Checker::new(rules(u64::MAX, u64::MAX, rate), true, 0);
        for _ in 0..3 {
            assert_eq!(c.check(&h(0x1, true, 1, true)), Ok(()));
        }
        assert_eq!(c.check(&h(0x1, true, 1, true)), Err(1008));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(c.check(&h(0x1, true, 1, true)), Ok(()));
        // Control frames and the server's messages are not counted.
        assert_eq!(c.check(&h(0x9, true, 0, true)), Ok(()));
        let mut s = Checker::new(rules(u64::MAX, u64::MAX, rate), false, 0);
        for _ in 0..10 {
            assert_eq!(s.check(&h(0x1, true, 1, false)), Ok(()));
        }
    }

    #[test]
    fn a_close_payload_is_unmasked_and_read() {
        let mut p = PeerClose::default();
        let mask = [1, 2, 3, 4];
        let plain = [0x03, 0xE8, b'b', b'y', b'e'];
        let masked: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        p.start(5, mask);
        p.take(&masked[..2]);
        assert!(p.wanting());
        p.take(&masked[2..]);
        assert!(!p.wanting());
        assert_eq!(p.code_and_reason(), (1000, "bye".to_string()));
    }
}
