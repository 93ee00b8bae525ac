//! The messages `tls-source` and `chunk-source` send: a few header fields with a Message-ID unique to the
//! run and the message (the benchmark checks every message arrived exactly once by its
//! Message-ID), then a body of lines of `X`, as smtp-source does.

use std::time::{SystemTime, UNIX_EPOCH};

/// Builds the DATA of every message of a run.
pub struct Template {
    run: String,
    from: String,
    to: String,
    helo: String,
    /// the body, without the final dot
    body: Vec<u8>,
}

impl Template {
    /// `size` bytes of body (line ends included) for every message.
    pub fn new(size: usize, from: &str, to: &str, helo: &str) -> Template {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Template {
            run: format!("{nanos:x}.{}", std::process::id()),
            from: from.to_string(),
            to: to.to_string(),
            helo: helo.to_string(),
            body: body(size),
        }
    }

    /// Message number `i`, header and body, ending with the line of a single dot (what
    /// follows DATA; no line of it needs dot-stuffing).
    pub fn message(&self, i: usize) -> Vec<u8> {
        let mut m = self.content(i);
        m.extend_from_slice(b".\r\n");
        m
    }

    /// Message number `i`, header and body, as it is: what BDAT chunks carry.
    pub fn content(&self, i: usize) -> Vec<u8> {
        let head = format!(
            "From: <{}>\r\nTo: <{}>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
             Subject: TLS benchmark message {i}\r\nMessage-ID: <{}.{i}@{}>\r\n\r\n",
            self.from, self.to, self.run, self.helo
        );
        let mut m = Vec::with_capacity(head.len() + self.body.len() + 3);
        m.extend_from_slice(head.as_bytes());
        m.extend_from_slice(&self.body);
        m
    }
}

/// `size` bytes of lines of `X` (80 bytes a line with its CRLF). No line starts with a
/// dot, so none needs stuffing.
fn body(size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size + 5);
    while b.len() + 2 < size {
        let n = (size - b.len() - 2).min(78);
        b.resize(b.len() + n, b'X');
        b.extend_from_slice(b"\r\n");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_size_and_lines() {
        for size in [0usize, 1, 2, 3, 80, 81, 1024, 65536] {
            let b = body(size);
            let content = b.len();
            assert!(content <= size && content + 2 >= size);
            for line in b[..content]
                .split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
            {
                assert!(line.len() <= 79 && line.ends_with(b"\r") && line[0] == b'X');
            }
        }
        assert_eq!(body(1024).len(), 1024);
        assert_eq!(body(65536).len(), 65536);
        let t = Template::new(100, "a@bench.test", "u@bench.test", "client.bench.test");
        let (m, c) = (t.message(3), t.content(3));
        assert!(m.starts_with(&c) && m.ends_with(b"\r\n.\r\n") && m.len() == c.len() + 3);
    }

    #[test]
    fn distinct_message_ids() {
        let t = Template::new(10, "a@bench.test", "u@bench.test", "client.bench.test");
        let id = |m: Vec<u8>| {
            let s = String::from_utf8(m).unwrap_or_default();
            s.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .map(str::to_string)
        };
        assert!(id(t.message(1)).is_some());
        assert_ne!(id(t.message(1)), id(t.message(2)));
    }
}
