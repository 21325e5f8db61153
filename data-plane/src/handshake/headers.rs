//! A request's headers in one buffer.

/// Names and values as the client sent them (and any the proxy adds), in order, in one
/// buffer with one index: a `(String, Vec<u8>)` per header cost two allocations each, about
/// a third of a handshake's.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

/// One header in `bytes`: its name is `start..name_end`, its value `name_end..end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    name_end: u32,
    end: u32,
}

impl Headers {
    pub fn from_parsed(parsed: &[httparse::Header<'_>]) -> Headers {
        let room = parsed.iter().map(|h| h.name.len() + h.value.len()).sum();
        let mut h = Headers { bytes: Vec::with_capacity(room), spans: Vec::with_capacity(parsed.len()) };
        for p in parsed {
            h.push(p.name, p.value);
        }
        h
    }

    /// Adds a header after the others. Heads are capped far below 4 GiB, so offsets fit a u32.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name.as_bytes());
        let name_end = self.bytes.len() as u32;
        self.bytes.extend_from_slice(value);
        self.spans.push(Span { start, name_end, end: self.bytes.len() as u32 });
    }

    fn name(&self, s: &Span) -> &[u8] {
        &self.bytes[s.start as usize..s.name_end as usize]
    }

    fn value(&self, s: &Span) -> &[u8] {
        &self.bytes[s.name_end as usize..s.end as usize]
    }

    /// Each header as (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        // Names are tokens (httparse checks them) or the proxy's own: ASCII either way.
        self.spans.iter().map(|s| (std::str::from_utf8(self.name(s)).unwrap_or(""), self.value(s)))
    }

    /// The values of the headers named `name` (any case), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.spans.iter().filter(move |s| self.name(s).eq_ignore_ascii_case(name.as_bytes())).map(|s| self.value(s))
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let s = self.spans.iter().find(|s| self.name(s).eq_ignore_ascii_case(name.as_bytes()))?;
        Some(self.value(s))
    }

    /// Drops every header named `name` (any case); its bytes stay until the request goes.
    pub fn remove(&mut self, name: &str) {
        let bytes = &self.bytes;
        self.spans.retain(|s| !bytes[s.start as usize..s.name_end as usize].eq_ignore_ascii_case(name.as_bytes()));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_case_and_duplicates() {
        let parsed = [
            httparse::Header { name: "Host", value: b"a" },
            httparse::Header { name: "X-Forwarded-For", value: b"1.1.1.1" },
            httparse::Header { name: "x-forwarded-for", value: b"2.2.2.2" },
        ];
        let mut h = Headers::from_parsed(&parsed);
        assert_eq!(h.get("HOST"), Some(&b"a"[..]));
        assert_eq!(h.all("X-FORWARDED-FOR").collect::<Vec<_>>(), [&b"1.1.1.1"[..], b"2.2.2.2"]);
        h.remove("x-forwarded-FOR");
        h.push("X-User", b"u1");
        let all: Vec<_> = h.iter().collect();
        assert_eq!(all, [("Host", &b"a"[..]), ("X-User", b"u1")]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("x-forwarded-for"), None);
    }
}
