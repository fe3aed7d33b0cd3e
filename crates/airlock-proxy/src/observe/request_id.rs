//! The id of one request: process-unique, shown to plugins (`handshake.id`) and in the
//! access log, as hex.

use std::sync::atomic::{AtomicU64, Ordering};

/// A process-unique id for a request, shown to plugins and in the access log (as hex).
/// Kept as a number and formatted only where it is shown: most requests never are.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(u64);

impl RequestId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The id in lower-case hex, as `Display` writes it. Without the formatting machinery:
    /// it runs for every request a plugin sees.
    pub fn to_hex(self) -> String {
        self.hex(&mut [0; 16]).to_owned()
    }

    /// The hex digits, written into the end of `buf`.
    fn hex(self, buf: &mut [u8; 16]) -> &str {
        let mut rest = self.0;
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b"0123456789abcdef"[(rest & 0xf) as usize];
            rest >>= 4;
            if rest == 0 {
                break;
            }
        }
        std::str::from_utf8(&buf[start..]).expect("hex digits are ASCII")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hex(&mut [0; 16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_in_hex_match_display() {
        for n in [0, 1, 15, 16, 0xabc, u64::MAX] {
            let id = RequestId(n);
            // Both now come from `hex`: compare them with the standard library's `{:x}`.
            assert_eq!(id.to_hex(), format!("{n:x}"));
            assert_eq!(id.to_string(), format!("{n:x}"));
        }
    }
}
