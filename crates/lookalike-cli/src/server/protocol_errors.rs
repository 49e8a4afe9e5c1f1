//! JSON bodies for the answers hyper writes itself. A request hyper cannot parse (a broken
//! request line or header, a URI or header section over its limits) never reaches the router:
//! hyper answers it with a bare 400, 414 or 431 and closes the connection. [`JsonProtocolErrors`]
//! sits between hyper and the socket and gives that answer the `{"error": {code, message}}` body
//! every other error has.
//!
//! Such an answer is recognised by its head alone: it starts a write, has an error status and
//! `content-length: 0`, and lacks the `x-request-id` that every answer of the router carries.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::layers::REQUEST_ID;

/// A connection whose bare protocol-error answers get JSON bodies.
pub struct JsonProtocolErrors<IO> {
    inner: IO,
    /// The answer written in place of hyper's, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<IO> JsonProtocolErrors<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            replacement: None,
        }
    }
}

/// The JSON answer for hyper's bare answer `head`, if it is one.
fn replacement_for(head: &[u8]) -> Option<Vec<u8>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&head[..end]).ok()?;
    let (status_line, fields) = head.split_once("\r\n").unwrap_or((head, ""));
    let status: u16 = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let field = |name: &str| {
        fields.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    if field("content-length") != Some("0") || field(REQUEST_ID.as_str()).is_some() {
        return None;
    }
    let (code, message) = match status {
        400 => (
            "bad_request",
            "the request is not well-formed HTTP (its request line, a header or its framing)",
        ),
        414 => ("uri_too_long", "the request's URI is longer than this server reads"),
        431 => (
            "headers_too_large",
            "the request has more headers, or larger ones, than this server reads",
        ),
        _ => return None,
    };
    tracing::info!(status, code, "answered a request that could not be parsed");
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(date) = field("date") {
        answer.push_str(&format!("date: {date}\r\n"));
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

impl<IO: AsyncWrite + Unpin> JsonProtocolErrors<IO> {
    /// Writes what is left of the replacement; ready once it is all out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `first` (the start of a write) in place of hyper's answer if it is a bare protocol
    /// error; how many bytes were taken.
    fn replace(&mut self, first: &[u8]) -> Option<usize> {
        if self.replacement.is_some() || !first.starts_with(b"HTTP/1.1 4") {
            return None;
        }
        let answer = replacement_for(first)?;
        self.replacement = Some((answer, 0));
        Some(first.len())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonProtocolErrors<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonProtocolErrors<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if let Some(taken) = self.replace(buf) {
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        // Hyper's answer may follow the tail of an earlier one in the same write: that goes first.
        let bufs = match bufs.iter().position(|b| b.starts_with(b"HTTP/1.1 4")) {
            Some(0) => match self.replace(&bufs[0]) {
                Some(taken) => return Poll::Ready(Ok(taken)),
                None => bufs,
            },
            Some(at) => &bufs[..at],
            None => bufs,
        };
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_protocol_errors_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 16:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(replacement_for(bare).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Wed, 02 Dec 2026 16:00:00 GMT"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");

        for kept in [
            &b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert!(replacement_for(kept).is_none(), "{}", String::from_utf8_lossy(kept));
        }
    }
}
