//! End-of-message edits from filters, applied to a spooled message.
//!
//! The spooled message starts with the daemon's own `Received:` header, which filters
//! never see: header indexes count from the first header after it, and it stays first.
//! Header values may hold folds written with bare LF or CR LF; they are stored as LF
//! followed by white space, like every other line of the spool.

/// The edits a filter makes: only header and body edits touch the spooled message
/// (envelope edits are the session's).
pub use smtpd_filter::Edit;

/// Whether `name` may be a header field name (RFC 5322 §3.6.8: printable, no colon).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Normalises a header value: folds become LF + white space, other control characters
/// are refused (`None`).
pub fn clean_value(v: &str) -> Option<String> {
    let v = v.replace("\r\n", "\n");
    let mut out = String::with_capacity(v.len());
    let mut lines = v.split('\n');
    if let Some(first) = lines.next() {
        out.push_str(first.trim_start());
    }
    for l in lines {
        // A continuation must start with white space; add it when a filter forgot.
        out.push('\n');
        if !l.starts_with([' ', '\t']) {
            out.push('\t');
        }
        out.push_str(l);
    }
    if out
        .bytes()
        .any(|b| b != b'\n' && b != b'\t' && b.is_ascii_control())
        || out.len() > 8192
    {
        return None;
    }
    Some(out)
}

/// Splits a spooled message into its Received prefix, header fields (each with its
/// continuation lines) and body (after the empty line, which is kept out).
fn split(msg: &[u8]) -> (&[u8], Vec<&[u8]>, Option<&[u8]>) {
    let mut pos = 0;
    // Our Received header: its first line and its continuations.
    let mut prefix_end = 0;
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut cur_start: Option<usize> = None;
    let mut first = true;
    while pos < msg.len() {
        let end = memchr::memchr(b'\n', &msg[pos..]).map_or(msg.len(), |i| pos + i + 1);
        let line = &msg[pos..end];
        let cont = line.starts_with(b" ") || line.starts_with(b"\t");
        if line == b"\n" {
            if let Some(s) = cur_start.take() {
                fields.push(&msg[s..pos]);
            }
            return (&msg[..prefix_end], fields, Some(&msg[end..]));
        }
        if first {
            prefix_end = end;
            if !line.starts_with(b"Received:") {
                // No prefix (a message made by the daemon itself).
                prefix_end = 0;
                cur_start = Some(pos);
            }
            first = false;
        } else if cont {
            if cur_start.is_none() {
                prefix_end = end;
            }
        } else {
            if let Some(s) = cur_start.take() {
                fields.push(&msg[s..pos]);
            }
            cur_start = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = cur_start.take() {
        fields.push(&msg[s..]);
    }
    (&msg[..prefix_end], fields, None)
}

fn field_name(f: &[u8]) -> &[u8] {
    let end = memchr::memchr(b':', f).unwrap_or(f.len());
    f[..end].trim_ascii_end()
}

fn render(name: &str, value: &str) -> Vec<u8> {
    let mut v = format!("{name}: {value}").into_bytes();
    v.push(b'\n');
    v
}

/// Applies edits (in order) and, with `junk`, an `X-Spam: Yes` header; returns the new
/// message.
pub fn apply(msg: &[u8], edits: &[Edit], junk: bool) -> Vec<u8> {
    let (prefix, fields, body) = split(msg);
    let mut headers: Vec<Vec<u8>> = fields.iter().map(|f| f.to_vec()).collect();
    let mut new_body: Option<Vec<u8>> = None;
    for e in edits {
        match e {
            Edit::AddHeader(n, v) => headers.push(render(n, v)),
            Edit::InsertHeader(i, n, v) => {
                let at = (*i as usize).min(headers.len());
                headers.insert(at, render(n, v));
            }
            Edit::ChangeHeader(i, n, v) => {
                let want = (*i).max(1) as usize;
                let found = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| field_name(h).eq_ignore_ascii_case(n.as_bytes()))
                    .nth(want - 1)
                    .map(|(k, _)| k);
                if let Some(k) = found {
                    if v.is_empty() {
                        headers.remove(k);
                    } else {
                        headers[k] = render(n, v);
                    }
                }
            }
            // Chunks are joined first: a CR LF may straddle two of them.
            Edit::ReplaceBody(b) => new_body.get_or_insert_with(Vec::new).extend_from_slice(b),
            // Envelope edits are the session's, not the message's.
            Edit::AddRcpt(_) | Edit::DelRcpt(_) | Edit::ChangeFrom(_) | Edit::Quarantine(_) => {}
        }
    }
    // Bytes as given (any charset), CR LF turned into the spool's LF.
    let new_body = new_body.map(|b| {
        let mut out = Vec::with_capacity(b.len());
        for (i, &c) in b.iter().enumerate() {
            if !(c == b'\r' && b.get(i + 1) == Some(&b'\n')) {
                out.push(c);
            }
        }
        out
    });
    if junk {
        // The verdict replaces whatever X-Spam header the sender wrote.
        headers.retain(|h| !field_name(h).eq_ignore_ascii_case(b"X-Spam"));
        headers.insert(0, render("X-Spam", "Yes"));
    }
    let mut out = Vec::with_capacity(msg.len() + 256);
    out.extend_from_slice(prefix);
    for h in &headers {
        out.extend_from_slice(h);
        if !h.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    match (new_body, body) {
        (Some(b), _) => {
            out.push(b'\n');
            out.extend_from_slice(&b);
            if !b.is_empty() && !b.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
        (None, Some(b)) => {
            out.push(b'\n');
            out.extend_from_slice(b);
        }
        (None, None) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"Received: from x\n\tby y; date\nSubject: hi\nX-A: 1\n continued\nTo: a@b\n\nbody\n";

    #[test]
    fn header_edits_keep_our_received_first() {
        let out = apply(
            MSG,
            &[
                Edit::AddHeader("X-End".into(), "e".into()),
                Edit::InsertHeader(0, "X-First".into(), "f".into()),
                Edit::ChangeHeader(1, "x-a".into(), "2".into()),
                Edit::ChangeHeader(1, "To".into(), String::new()),
            ],
            true,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Received: from x\n\tby y; date\nX-Spam: Yes\nX-First: f\nSubject: hi\nx-a: 2\nX-End: e\n\nbody\n"
        );
    }

    #[test]
    fn body_replacement_and_no_body() {
        let out = apply(MSG, &[Edit::ReplaceBody(b"new\r\nbody".to_vec())], false);
        assert!(out.ends_with(b"To: a@b\n\nnew\nbody\n"));
        let out = apply(
            b"Received: r\nSubject: s\n",
            &[Edit::AddHeader("X".into(), "y".into())],
            false,
        );
        assert_eq!(out, b"Received: r\nSubject: s\nX: y\n".to_vec());
    }

    #[test]
    fn values_and_names() {
        assert!(valid_name("X-Filter"));
        assert!(!valid_name("Bad Name") && !valid_name("a:b") && !valid_name(""));
        assert_eq!(clean_value("a\r\n b").as_deref(), Some("a\n b"));
        assert_eq!(clean_value("a\nb").as_deref(), Some("a\n\tb"));
        assert_eq!(clean_value("a\rb"), None);
        assert_eq!(clean_value("a\0b"), None);
    }
}
