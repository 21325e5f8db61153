//! Tracks WebSocket frame boundaries in a byte stream (RFC 6455 §5.2) without copying,
//! unmasking or re-encoding payloads: the relay forwards bytes as they arrive and asks this
//! only where frames begin and end, how big the current message is, and which control
//! frames went by.

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes the proxy sends itself.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Why a stream cannot be relayed further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("message larger than the limit")]
    MessageTooBig,
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// Incremental frame-header parser over one direction of a connection.
#[derive(Debug, Clone)]
pub struct Tracker {
    hdr: [u8; 14],
    hdr_len: u8,
    /// Payload bytes left in the current frame.
    remaining: u64,
    in_payload: bool,
    fin: bool,
    opcode: u8,
    /// A fragmented data message is open.
    in_message: bool,
    msg_bytes: u64,
    max_message: u64,
    /// Completed data messages.
    pub messages: u64,
    /// A Close frame has gone by.
    pub saw_close: bool,
}

fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

impl Tracker {
    pub fn new(max_message: u64) -> Tracker {
        Tracker {
            hdr: [0; 14],
            hdr_len: 0,
            remaining: 0,
            in_payload: false,
            fin: false,
            opcode: 0,
            in_message: false,
            msg_bytes: 0,
            max_message,
            messages: 0,
            saw_close: false,
        }
    }

    /// True when the bytes fed so far end exactly between frames, where the proxy may insert
    /// a frame of its own.
    pub fn at_boundary(&self) -> bool {
        !self.in_payload && self.hdr_len == 0
    }

    /// Feeds the next bytes of the stream. On a violation, returns how many bytes of `data`
    /// precede the offending frame (they end at a boundary and may still be forwarded).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), (usize, Violation)> {
        let mut i = 0;
        while i < data.len() {
            if self.in_payload {
                let take = (self.remaining.min((data.len() - i) as u64)) as usize;
                self.remaining -= take as u64;
                i += take;
                if self.remaining == 0 {
                    self.in_payload = false;
                    self.finish_frame();
                }
                continue;
            }
            let frame_start = i.saturating_sub(self.hdr_len as usize);
            let need = header_len(&self.hdr[..self.hdr_len as usize]);
            let take = (need - self.hdr_len as usize).min(data.len() - i);
            self.hdr[self.hdr_len as usize..self.hdr_len as usize + take].copy_from_slice(&data[i..i + take]);
            self.hdr_len += take as u8;
            i += take;
            let need = header_len(&self.hdr[..self.hdr_len as usize]);
            if (self.hdr_len as usize) < need {
                continue;
            }
            let start = if frame_start <= i { frame_start } else { 0 };
            self.parse_header().map_err(|v| (start, v))?;
        }
        Ok(())
    }

    fn parse_header(&mut self) -> Result<(), Violation> {
        let h = &self.hdr;
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            // RSV bits belong to negotiated extensions (permessage-deflate sets RSV1); the
            // proxy passes extensions through, so it does not judge them.
        }
        let opcode = h[0] & 0x0f;
        let len7 = (h[1] & 0x7f) as u64;
        let len = match len7 {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => n,
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return Err(Violation::Protocol("fragmented or oversized control frame"));
                }
            }
            OP_CONTINUATION => {
                if !self.in_message {
                    return Err(Violation::Protocol("continuation without a message"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.in_message {
                    return Err(Violation::Protocol("new message inside a fragmented one"));
                }
            }
            _ => return Err(Violation::Protocol("reserved opcode")),
        }
        if opcode < OP_CLOSE {
            self.msg_bytes = self.msg_bytes.saturating_add(len);
            if self.msg_bytes > self.max_message {
                return Err(Violation::MessageTooBig);
            }
        }
        self.fin = fin;
        self.opcode = opcode;
        self.hdr_len = 0;
        self.remaining = len;
        if len == 0 {
            self.finish_frame();
        } else {
            self.in_payload = true;
        }
        Ok(())
    }

    fn finish_frame(&mut self) {
        match self.opcode {
            OP_CLOSE => self.saw_close = true,
            OP_PING | OP_PONG => {}
            _ if self.fin => {
                self.messages += 1;
                self.in_message = false;
                self.msg_bytes = 0;
            }
            _ => self.in_message = true,
        }
    }
}

/// A control frame from the proxy itself: masked toward a server, unmasked toward a client
/// (RFC 6455 §5.1).
pub fn control_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    debug_assert!(payload.len() <= 125);
    let mut f = Vec::with_capacity(6 + payload.len());
    f.push(0x80 | opcode);
    match mask {
        None => {
            f.push(payload.len() as u8);
            f.extend_from_slice(payload);
        }
        Some(m) => {
            f.push(0x80 | payload.len() as u8);
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
    }
    f
}

pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    control_frame(OP_CLOSE, &p, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, op: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | len as u8);
        } else if len < 65536 {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn boundaries_across_any_split() {
        let mut stream = frame(true, OP_TEXT, 5, true);
        stream.extend(frame(false, OP_BINARY, 300, true));
        stream.extend(frame(true, OP_PING, 3, true));
        stream.extend(frame(true, OP_CONTINUATION, 70_000, true));
        stream.extend(frame(true, OP_CLOSE, 2, true));
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut t = Tracker::new(1 << 20);
            for c in stream.chunks(chunk) {
                t.feed(c).unwrap();
            }
            assert!(t.at_boundary(), "chunk {chunk}");
            assert_eq!(t.messages, 2, "chunk {chunk}");
            assert!(t.saw_close);
        }
        let mut t = Tracker::new(1 << 20);
        t.feed(&stream[..10]).unwrap();
        assert!(!t.at_boundary());
    }

    #[test]
    fn message_limit_counts_fragments_and_reports_the_safe_prefix() {
        let mut stream = frame(true, OP_TEXT, 10, false);
        let first = stream.len();
        stream.extend(frame(false, OP_BINARY, 60, false));
        stream.extend(frame(true, OP_CONTINUATION, 60, false));
        let mut t = Tracker::new(100);
        let (ok, v) = t.feed(&stream).unwrap_err();
        assert_eq!(v, Violation::MessageTooBig);
        assert_eq!(ok, first + 2 + 60, "bytes before the frame that broke the limit");
    }

    #[test]
    fn protocol_errors() {
        let mut t = Tracker::new(1 << 20);
        assert!(t.feed(&frame(true, OP_CONTINUATION, 1, false)).is_err());
        let mut t = Tracker::new(1 << 20);
        assert!(t.feed(&frame(true, OP_PING, 126, false)).is_err());
        let mut t = Tracker::new(1 << 20);
        assert!(t.feed(&frame(true, 0x3, 1, false)).is_err());
    }

    #[test]
    fn proxy_frames_parse_back() {
        let mut t = Tracker::new(10);
        t.feed(&close_frame(CLOSE_GOING_AWAY, "bye", Some([9, 8, 7, 6]))).unwrap();
        assert!(t.saw_close && t.at_boundary());
        let f = close_frame(1001, "", None);
        assert_eq!(f, vec![0x88, 2, 0x03, 0xE9]);
    }
}
