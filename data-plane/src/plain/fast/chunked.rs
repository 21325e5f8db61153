//! Where a chunked body ends, followed byte by byte as it passes (RFC 9112 §7.1).

/// Longest chunk-size line (extensions included) and all trailer lines together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits of a chunk size: 15 keep it below 2^60.
const MAX_DIGITS: u8 = 15;

/// Follows a chunked body byte by byte (RFC 9112 §7.1), strictly: CRLF line endings only, a
/// size in at most 15 hex digits, no control bytes in extensions or trailers. The body is
/// passed on as it came, so this is what keeps a backend's framing from being read one way
/// here and another by the client.
#[derive(Default)]
pub(super) struct Chunked {
    st: St,
    size: u64,
    digits: u8,
    /// Leading zeros of the size, and whitespace after it (bounded as a line is).
    zeros: usize,
    line: usize,
    /// The trailer line being read is past its name.
    colon: bool,
    trailers: usize,
}

#[derive(Default, Clone, Copy)]
enum St {
    #[default]
    Size,
    /// Whitespace after the size.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    LastLf,
    Done,
}

impl Chunked {
    /// How many of `b` belong to the body, and whether it ends with them.
    pub(super) fn scan(&mut self, b: &[u8]) -> Result<(usize, bool), &'static str> {
        let text = |c: u8| c == b'\t' || (c >= 0x20 && c != 0x7f);
        let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            i += 1;
            self.st = match self.st {
                St::Size => match (c as char).to_digit(16) {
                    // Leading zeros are not counted against the size's digits.
                    Some(d) if self.size != 0 || d != 0 => {
                        if self.digits == MAX_DIGITS {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                        St::Size
                    }
                    Some(_) if self.zeros < MAX_CHUNK_LINE => {
                        self.zeros += 1;
                        St::Size
                    }
                    Some(_) => return Err("chunk size line too long"),
                    None if self.digits == 0 && self.zeros == 0 => return Err("bad chunk size"),
                    None if c == b'\r' => St::SizeLf,
                    None if c == b';' => {
                        self.line = 0;
                        St::Ext
                    }
                    // Whitespace after the size (BWS) only before `;` or the line's end: `1 0`
                    // would be 0x10 to a lenient reader.
                    None if matches!(c, b' ' | b'\t') => St::SizeWs,
                    None => return Err("bad chunk size"),
                },
                St::SizeWs if matches!(c, b' ' | b'\t') && self.zeros < MAX_CHUNK_LINE => {
                    self.zeros += 1;
                    St::SizeWs
                }
                St::SizeWs if c == b'\r' => St::SizeLf,
                St::SizeWs if c == b';' => {
                    self.line = 0;
                    St::Ext
                }
                St::SizeWs => return Err("bad chunk size"),
                St::Ext if c == b'\r' => St::SizeLf,
                St::Ext if text(c) && self.line < MAX_CHUNK_LINE => {
                    self.line += 1;
                    St::Ext
                }
                St::Ext => return Err("bad chunk extension"),
                St::SizeLf if c != b'\n' => return Err("bad chunk size line"),
                St::SizeLf if self.size == 0 => {
                    self.line = 0;
                    St::Trailer
                }
                St::SizeLf => {
                    (self.digits, self.zeros) = (0, 0);
                    St::Data
                }
                // `c` is the first byte of the data; the rest of it that is here goes at once.
                St::Data => {
                    let n = (self.size - 1).min((b.len() - i) as u64);
                    i += n as usize;
                    self.size -= n + 1;
                    if self.size == 0 {
                        St::DataCr
                    } else {
                        St::Data
                    }
                }
                St::DataCr if c == b'\r' => St::DataLf,
                St::DataLf if c == b'\n' => St::Size,
                St::DataCr | St::DataLf => return Err("chunk data longer than its size"),
                St::Trailer if c == b'\r' && self.line == 0 => St::LastLf,
                St::Trailer if c == b'\r' && self.colon => St::TrailerLf,
                St::Trailer if self.trailers >= MAX_TRAILERS => return Err("trailers too large"),
                // A trailer is a field: a name of token bytes, a colon, a value.
                St::Trailer if !self.colon && c == b':' && self.line > 0 => {
                    self.colon = true;
                    self.trailers += 1;
                    St::Trailer
                }
                St::Trailer if (self.colon && text(c)) || (!self.colon && token(c)) => {
                    self.line += 1;
                    self.trailers += 1;
                    St::Trailer
                }
                St::Trailer => return Err("bad trailer"),
                St::TrailerLf if c == b'\n' => {
                    (self.line, self.colon) = (0, false);
                    St::Trailer
                }
                St::TrailerLf => return Err("bad trailer line"),
                St::LastLf if c == b'\n' => {
                    self.st = St::Done;
                    return Ok((i, true));
                }
                St::LastLf => return Err("bad end of chunked body"),
                St::Done => return Ok((i - 1, true)),
            };
        }
        Ok((i, matches!(self.st, St::Done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<(usize, bool), &'static str> {
        Chunked::default().scan(body)
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok((body.len() - 4, true)));
        assert_eq!(whole(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(whole(b"0000000000000005 \t;a=\"b c\"\r\nhello\r\n0\r\n\r\n"), Ok((40, true)));
        assert_eq!(whole(b"A \r\n0123456789\r\n0\r\n\r\n"), Ok((21, true)));
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok((20, true)));
    }

    #[test]
    fn a_chunked_body_split_anywhere_ends_in_the_same_place() {
        let body = b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nA: b\r\n\r\n";
        for cut in 0..=body.len() {
            for cut2 in cut..=body.len() {
                let mut c = Chunked::default();
                let (a, end_a) = c.scan(&body[..cut]).unwrap();
                assert_eq!((a, end_a), (cut, cut == body.len()), "first part to {cut}");
                let (b, end_b) = c.scan(&body[cut..cut2]).unwrap();
                assert_eq!(b, cut2 - cut);
                assert!(!end_b || cut2 == body.len());
                let (r, end) = c.scan(&body[cut2..]).unwrap();
                assert_eq!((cut2 + r, end || end_b), (body.len(), true), "split at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn chunked_framing_that_could_be_read_two_ways_is_refused() {
        assert!(whole(b"5\nhello\r\n0\r\n\r\n").is_err(), "bare LF after the size");
        assert!(whole(b"5\r\nhello!\r\n").is_err(), "data longer than its size");
        assert!(whole(b"x\r\n").is_err());
        assert!(whole(b"\r\n").is_err(), "no size");
        assert!(whole(b"1000000000000000\r\n").is_err(), "16 hex digits");
        assert!(whole(b"0\r\nA: b\n\r\n").is_err(), "bare LF in a trailer");
        assert!(whole(b"1;a\x00b\r\nx\r\n").is_err(), "control byte in an extension");
        assert!(whole(b"-1\r\n").is_err());
        assert!(whole(b"1 0\r\n").is_err(), "whitespace inside the size");
        assert!(whole(b"5 junk\r\n").is_err(), "an extension without `;`");
        assert!(whole(b"0\r\n \r\n\r\n").is_err(), "a blank trailer line");
        assert!(whole(b"0\r\nno colon\r\n\r\n").is_err(), "a trailer without a name");
        assert!(whole(b"0\r\n: v\r\n\r\n").is_err(), "an empty trailer name");
    }
}
