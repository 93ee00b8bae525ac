use super::*;

const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n";

/// Reads `resp` fed in the given pieces, then the end of the connection if it is
/// not done yet.
fn read(pieces: &[&[u8]]) -> Result<Vec<u8>, HttpError> {
    let mut r = Response::new();
    let mut done = false;
    for p in pieces {
        done = r.feed(p)? == Progress::Done;
    }
    if !done {
        assert_eq!(r.eof()?, Progress::Done);
    }
    Ok(r.body().unwrap().to_vec())
}

/// Every way of cutting `resp` in two, and byte by byte, reads as whole.
fn every_split(resp: &[u8]) -> Result<Vec<u8>, HttpError> {
    let whole = read(&[resp]);
    for i in 0..=resp.len() {
        assert_eq!(read(&[&resp[..i], &resp[i..]]), whole, "split at {i}");
    }
    let bytes: Vec<&[u8]> = resp.chunks(1).collect();
    assert_eq!(read(&bytes), whole);
    whole
}

fn with_length(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nServer: x\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn the_request() {
    let r = String::from_utf8(request("example.test.")).unwrap();
    assert_eq!(
        r,
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\nUser-Agent: smtpd\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(policy_host("example.test"), "mta-sts.example.test");
}

#[test]
fn content_length() {
    let resp = with_length(POLICY);
    assert_eq!(every_split(&resp).unwrap(), POLICY.as_bytes());
    // Done as soon as the body is; what follows is ignored.
    let mut r = Response::new();
    let mut more = resp.clone();
    more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    assert_eq!(r.feed(&more), Ok(Progress::Done));
    assert_eq!(r.body(), Some(POLICY.as_bytes()));
    // An empty body.
    assert_eq!(every_split(&with_length("")).unwrap(), b"");
    // LF line ends, HTTP/1.0, a repeated equal length.
    let lf =
        "HTTP/1.0 200\nContent-Type: TEXT/PLAIN\ncontent-length: 5\nContent-Length: 5\n\nhello";
    assert_eq!(every_split(lf.as_bytes()).unwrap(), b"hello");
}

#[test]
fn chunked() {
    let resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
                10;name=value\r\nversion: STSv1\r\n\r\n\
                3F \r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\nextra: ab\r\n\r\n\
                0\r\nTrailer: x\r\n\r\nignored";
    let body = every_split(resp.as_bytes()).unwrap();
    assert_eq!(
        body,
        b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\nextra: ab\r\n"
    );
    // Truncated: no last chunk.
    let cut = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    assert_eq!(read(&[cut.as_bytes()]), Err(HttpError::Truncated));
    for bad in [
        "x\r\n",
        "5\r\nhello!\r\n",
        "123456789\r\n",
        "\r\n",
        "-1\r\n",
    ] {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{bad}"
        );
        assert!(
            matches!(read(&[resp.as_bytes()]), Err(HttpError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn until_close() {
    let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{POLICY}");
    assert_eq!(every_split(resp.as_bytes()).unwrap(), POLICY.as_bytes());
    let mut r = Response::new();
    assert_eq!(r.feed(resp.as_bytes()), Ok(Progress::More));
    assert_eq!(r.body(), None);
    assert_eq!(r.eof(), Ok(Progress::Done));
}

#[test]
fn limits() {
    // A head over 8 KiB.
    let big = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    assert_eq!(read(&[big.as_bytes()]), Err(HttpError::HeadTooLong));
    let pieces: Vec<&[u8]> = big.as_bytes().chunks(100).collect();
    assert_eq!(read(&pieces), Err(HttpError::HeadTooLong));
    // A head of exactly 8 KiB is fine.
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-Pad: \r\n\r\n";
    let pad = "a".repeat(MAX_HEAD - head.len());
    let exact = head.replace("X-Pad: ", &format!("X-Pad: {pad}")) + "ok";
    assert_eq!(read(&[exact.as_bytes()]).unwrap(), b"ok");
    // A body over 64 KiB, by each framing.
    let body = "a".repeat(MAX_BODY + 1);
    assert_eq!(read(&[&with_length(&body)]), Err(HttpError::BodyTooLong));
    let close = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}");
    let pieces: Vec<&[u8]> = close.as_bytes().chunks(4096).collect();
    assert_eq!(read(&pieces), Err(HttpError::BodyTooLong));
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n8000\r\n{}\r\n8000\r\n{}\r\n1\r\n",
        &body[..0x8000],
        &body[..0x8000]
    );
    assert_eq!(read(&[chunked.as_bytes()]), Err(HttpError::BodyTooLong));
    // Exactly 64 KiB is fine.
    let max = "a".repeat(MAX_BODY);
    assert_eq!(read(&[&with_length(&max)]).unwrap().len(), MAX_BODY);
}

#[test]
fn refusals() {
    let status = |line: &str| {
        let resp = format!("{line}\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n");
        read(&[resp.as_bytes()])
    };
    assert_eq!(
        status("HTTP/1.1 301 Moved Permanently"),
        Err(HttpError::Redirect(301))
    );
    assert_eq!(status("HTTP/1.1 302 Found"), Err(HttpError::Redirect(302)));
    assert_eq!(
        status("HTTP/1.1 404 Not Found"),
        Err(HttpError::Status(404))
    );
    assert_eq!(
        status("HTTP/1.1 204 No Content"),
        Err(HttpError::Status(204))
    );
    assert_eq!(status("HTTP/1.1 100 Continue"), Err(HttpError::Status(100)));
    for bad in [
        "HTTP/2 200 OK",
        "HTTP/1.1 20 OK",
        "HTTP/1.1 2000",
        "http/1.1 200 OK",
        "HTTP/1.1  200",
        "SSH-2.0",
    ] {
        assert!(matches!(status(bad), Err(HttpError::Malformed(_))), "{bad}");
    }
    let fields = |f: &str| {
        let resp = format!("HTTP/1.1 200 OK\r\n{f}\r\n\r\nbody");
        read(&[resp.as_bytes()])
    };
    assert_eq!(
        fields("Content-Length: 4"),
        Err(HttpError::ContentType(None))
    );
    assert_eq!(
        fields("Content-Type: text/html\r\nContent-Length: 4"),
        Err(HttpError::ContentType(Some("text/html".into())))
    );
    assert_eq!(
        fields("Content-Type: text/plainx\r\nContent-Length: 4"),
        Err(HttpError::ContentType(Some("text/plainx".into())))
    );
    assert_eq!(
        fields("Content-Type: text/plain;q=1\r\nContent-Length: 4").unwrap(),
        b"body"
    );
    for bad in [
        "Content-Type: text/plain\r\nContent-Length: 4\r\nContent-Length: 5",
        "Content-Type: text/plain\r\nContent-Length: 4\r\nTransfer-Encoding: chunked",
        "Content-Type: text/plain\r\nTransfer-Encoding: gzip",
        "Content-Type: text/plain\r\nContent-Length: +4",
        "Content-Type: text/plain\r\nContent-Length: 4\r\n continued",
        "Content-Type: text/plain\r\nno colon",
        "Content-Type: text/plain\r\nBad Name: x",
        "Content-Type: text/plain\r\nContent-Type: text/plain",
        "Content-Type: text/plain\rContent-Length: 4",
    ] {
        assert!(
            matches!(fields(bad), Err(HttpError::Malformed(_))),
            "{bad:?}"
        );
    }
    // A short body, the connection closed early.
    let resp = with_length(POLICY);
    assert_eq!(read(&[&resp[..resp.len() - 1]]), Err(HttpError::Truncated));
    assert_eq!(read(&[b"HTTP/1.1 200 OK\r\n"]), Err(HttpError::Truncated));
    assert_eq!(read(&[b""]), Err(HttpError::Truncated));
    // After an error the reader stays failed.
    let mut r = Response::new();
    assert!(r.feed(b"HTTP/1.1 500 Oops\r\n").is_err());
    assert!(r.feed(b"more").is_err());
    assert!(r.eof().is_err());
    assert_eq!(r.body(), None);
    assert!(HttpError::Redirect(301)
        .to_string()
        .contains("not followed"));
}
