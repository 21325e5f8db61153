//! A backend's refusal of an upgrade (any final answer but `101`: a 401, a redirect, a page)
//! is the client's answer, relayed whole: its head with `Connection: close` added (the
//! connection ends with it, RFC 9112 §9.6), then its body, framed as the head says.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Relays the refusal in `resp` (its head is `head_len` bytes; what follows is body already
/// read) and the rest of its body, for at most `limit`: the head and what came with it first,
/// then the rest until its length, the backend's close, the client's, or `limit`. A chunked
/// body from a backend that keeps its connection open ends at `limit` (the handshake timeout)
/// unless the client, which can tell where it ends, leaves first.
pub(super) async fn relay<C, B>(client: &mut C, backend: &mut B, mut resp: Vec<u8>, head_len: usize, limit: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + Unpin,
{
    let mut body = resp.split_off(head_len);
    let length = body_length(&resp);
    crate::handshake::add_header(&mut resp, b"Connection: close");
    if let Some(n) = length {
        body.truncate(n.min(body.len() as u64) as usize);
    }
    let rest = length.map(|n| n - body.len() as u64);
    let _ = tokio::time::timeout(limit, async {
        client.write_all(&resp).await?;
        client.write_all(&body).await?;
        client.flush().await?;
        if rest == Some(0) {
            return Ok(());
        }
        let (mut from_client, mut to_client) = tokio::io::split(client);
        let copy = async {
            match rest {
                Some(n) => tokio::io::copy(&mut backend.take(n), &mut to_client).await?,
                None => tokio::io::copy(backend, &mut to_client).await?,
            };
            to_client.flush().await
        };
        // Whatever the client sends now is not read as a request; its close ends the relay.
        let gone = async {
            let mut sink = [0u8; 512];
            while matches!(from_client.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            biased;
            r = copy => r,
            _ = gone => Ok(()),
        }
    })
    .await;
}

/// How many body bytes follow `head`: none for 204 and 304, `Content-Length`'s value, or
/// `None` (until the backend closes) for a chunked or unframed body.
fn body_length(head: &[u8]) -> Option<u64> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hdrs);
    if !matches!(r.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    if matches!(r.code, Some(204 | 304)) {
        return Some(0);
    }
    if r.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
        return None;
    }
    let cl = r.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"))?;
    std::str::from_utf8(cl.value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_framed_as_the_head_says() {
        assert_eq!(body_length(b"HTTP/1.1 401 No\r\nContent-Length: 16\r\n\r\n"), Some(16));
        assert_eq!(body_length(b"HTTP/1.1 304 Same\r\nContent-Length: 16\r\n\r\n"), Some(0));
        assert_eq!(body_length(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), None);
        assert_eq!(body_length(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    #[tokio::test]
    async fn the_answer_goes_whole_and_says_the_connection_closes() {
        let (mut client, mut proxy_side) = tokio::io::duplex(4096);
        let (mut backend_far, mut backend) = tokio::io::duplex(4096);
        let head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 16\r\n\r\n0123".to_vec();
        let len = head.len() - 4;
        let writer = tokio::spawn(async move {
            backend_far.write_all(b"456789abcdef and then more").await.unwrap();
            backend_far
        });
        relay(&mut proxy_side, &mut backend, head, len, Duration::from_secs(5)).await;
        drop(proxy_side);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert_eq!(got, "HTTP/1.1 403 Forbidden\r\nContent-Length: 16\r\nConnection: close\r\n\r\n0123456789abcdef");
        drop(writer.await);
    }
}
