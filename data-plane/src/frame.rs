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

/// Which peer a stream comes from: RFC 6455 §5.1 has clients mask every frame and servers
/// none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
}

/// Incremental frame-header parser over one direction of a connection. Besides frame
/// boundaries it checks what a relay owes the protocol without unmasking payloads: masking by
/// direction, minimal length encodings, control-frame rules, fragmentation order, and a
/// Close's status code (its two bytes are the only payload bytes it reads). Nothing after a
/// Close is passed on.
#[derive(Debug, Clone)]
pub struct Tracker {
    hdr: [u8; 14],
    hdr_len: u8,
    from: Peer,
    /// Payload bytes left in the current frame.
    remaining: u64,
    in_payload: bool,
    fin: bool,
    opcode: u8,
    /// Of the current Close frame: its status code as read so far, and how many of its bytes.
    close_code: [u8; 2],
    close_read: u8,
    /// A fragmented data message is open.
    in_message: bool,
    msg_bytes: u64,
    max_message: u64,
    /// Completed data messages.
    pub messages: u64,
    /// A Close frame has gone by: the stream ends there.
    pub saw_close: bool,
    /// An extension was agreed in the handshake: the RSV bits are its to use (permessage-deflate
    /// sets RSV1), and they pass through unjudged. Without one they must be clear (RFC 6455 5.2).
    extensions: bool,
    /// Where in the last fed chunk the Close frame began, when it began in that chunk.
    pub close_start: Option<usize>,
    /// A frame that began in an earlier chunk (so partly passed on) broke a rule at its end:
    /// the output stays mid-frame for good, and nothing more is passed on.
    broken: bool,
    /// Bytes of a frame other than a Pong went by since [`Self::take_spoke`]. A Pong answers
    /// a Ping (the proxy's own, often): it shows the peer is there, not that the connection
    /// is in use, so it must not keep an idle connection open.
    pub spoke: bool,
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

/// Whether a peer may send this status code in a Close frame (RFC 6455 §7.4 and the IANA
/// registry): 1004-1006 and 1015 are reserved for reports, not frames.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl Tracker {
    pub fn new(max_message: u64, from: Peer) -> Tracker {
        Tracker {
            hdr: [0; 14],
            hdr_len: 0,
            from,
            remaining: 0,
            in_payload: false,
            fin: false,
            opcode: 0,
            close_code: [0; 2],
            close_read: 0,
            in_message: false,
            msg_bytes: 0,
            max_message,
            messages: 0,
            saw_close: false,
            extensions: false,
            close_start: None,
            broken: false,
            spoke: false,
        }
    }

    /// Whether an extension was agreed, so RSV bits may be set (see the field).
    pub fn with_extensions(mut self, agreed: bool) -> Tracker {
        self.extensions = agreed;
        self
    }

    /// The status code of the Close that went by (1005, "no status", for one without a code).
    pub fn close_code(&self) -> Option<u16> {
        self.saw_close.then(|| if self.close_read == 2 { u16::from_be_bytes(self.close_code) } else { 1005 })
    }

    /// True when the bytes fed so far end exactly between frames, where the proxy may insert
    /// a frame of its own.
    pub fn at_boundary(&self) -> bool {
        !self.in_payload && self.hdr_len == 0 && !self.broken
    }

    /// Feeds the next bytes of the stream; returns how many of them to pass on (all, unless a
    /// Close frame ends in them: what follows a Close is dropped). On a violation, returns how
    /// many bytes of `data` precede the offending frame: they end at a boundary and may still
    /// be passed on. When the offending frame began in an earlier chunk that is 0, and the
    /// output is mid-frame.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, (usize, Violation)> {
        self.close_start = None;
        if self.saw_close || self.broken {
            return Ok(0);
        }
        let mut i = 0;
        // Where the current frame began in `data`; `None` when it began in an earlier chunk.
        let mut frame_start = if self.at_boundary() { Some(0) } else { None };
        while i < data.len() {
            if self.in_payload {
                self.spoke |= self.opcode != OP_PONG;
                let take = (self.remaining.min((data.len() - i) as u64)) as usize;
                if self.opcode == OP_CLOSE {
                    self.read_close_code(&data[i..i + take]);
                }
                self.remaining -= take as u64;
                i += take;
                if self.remaining == 0 {
                    self.in_payload = false;
                    if let Err(v) = self.finish_frame() {
                        // Part of this frame went out with an earlier chunk: no frame of the
                        // proxy's may follow that part.
                        self.broken = frame_start.is_none();
                        return Err((frame_start.unwrap_or(0), v));
                    }
                    if self.saw_close {
                        self.close_start = frame_start;
                        return Ok(i);
                    }
                    frame_start = Some(i);
                }
                continue;
            }
            if self.hdr_len == 0 {
                frame_start = Some(i);
            }
            let need = header_len(&self.hdr[..self.hdr_len as usize]);
            let take = (need - self.hdr_len as usize).min(data.len() - i);
            self.hdr[self.hdr_len as usize..self.hdr_len as usize + take].copy_from_slice(&data[i..i + take]);
            self.hdr_len += take as u8;
            i += take;
            let need = header_len(&self.hdr[..self.hdr_len as usize]);
            if (self.hdr_len as usize) < need {
                continue;
            }
            let start = frame_start.unwrap_or(0);
            self.parse_header().map_err(|v| (start, v))?;
            self.spoke |= self.opcode != OP_PONG;
            if !self.in_payload {
                // An empty frame is whole with its header.
                self.finish_frame().map_err(|v| (start, v))?;
                if self.saw_close {
                    self.close_start = frame_start;
                    return Ok(i);
                }
                frame_start = Some(i);
            }
        }
        Ok(i)
    }

    fn parse_header(&mut self) -> Result<(), Violation> {
        let h = &self.hdr;
        let fin = h[0] & 0x80 != 0;
        // RSV bits belong to agreed extensions; the proxy passes extensions through, so it
        // judges the bits only when there is none.
        if h[0] & 0x70 != 0 && !self.extensions {
            return Err(Violation::Protocol("reserved bits set with no extension agreed"));
        }
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        if masked != (self.from == Peer::Client) {
            return Err(Violation::Protocol(if masked {
                "masked frame from a server"
            } else {
                "unmasked frame from a client"
            }));
        }
        let len7 = (h[1] & 0x7f) as u64;
        let len = match len7 {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => n,
        };
        let minimal = match len7 {
            126 => len >= 126,
            127 => len > 0xffff && len >> 63 == 0,
            _ => true,
        };
        if !minimal {
            return Err(Violation::Protocol("payload length not in its shortest form"));
        }
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return Err(Violation::Protocol("fragmented or oversized control frame"));
                }
                if opcode == OP_CLOSE && len == 1 {
                    return Err(Violation::Protocol("close frame with a 1-byte payload"));
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
        self.close_read = 0;
        self.hdr_len = 0;
        self.remaining = len;
        self.in_payload = len > 0;
        Ok(())
    }

    /// Takes the status code from the first payload bytes of a Close frame, unmasked.
    fn read_close_code(&mut self, payload: &[u8]) {
        for &b in payload {
            let k = self.close_read as usize;
            if k >= 2 {
                break;
            }
            // A control frame's header is 2 bytes, then the mask key if any.
            let m = if self.from == Peer::Client { self.hdr[2 + k] } else { 0 };
            self.close_code[k] = b ^ m;
            self.close_read += 1;
        }
    }

    fn finish_frame(&mut self) -> Result<(), Violation> {
        match self.opcode {
            OP_CLOSE => {
                if self.close_read == 2 && !close_code_allowed(u16::from_be_bytes(self.close_code)) {
                    return Err(Violation::Protocol("close frame with a status code that may not be sent"));
                }
                self.saw_close = true;
            }
            OP_PING | OP_PONG => {}
            _ if self.fin => {
                self.messages += 1;
                self.in_message = false;
                self.msg_bytes = 0;
            }
            _ => self.in_message = true,
        }
        Ok(())
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

/// A Close carrying only a code, built on the stack: the proxy's own closes (one or two per
/// connection) then cost no allocation.
pub struct CodeClose {
    bytes: [u8; 8],
    len: usize,
}

impl std::ops::Deref for CodeClose {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The same bytes as `close_frame(code, "", mask)`.
pub fn code_close(code: u16, mask: Option<[u8; 4]>) -> CodeClose {
    let [hi, lo] = code.to_be_bytes();
    match mask {
        None => CodeClose { bytes: [0x80 | OP_CLOSE, 2, hi, lo, 0, 0, 0, 0], len: 4 },
        Some(m) => CodeClose { bytes: [0x80 | OP_CLOSE, 0x82, m[0], m[1], m[2], m[3], hi ^ m[0], lo ^ m[1]], len: 8 },
    }
}

/// A Close with a reason, as the tests' peers send one (the proxy's own carry only a code:
/// [`code_close`]).
#[cfg(test)]
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    control_frame(OP_CLOSE, &p, mask)
}

#[cfg(test)]
mod tests;
