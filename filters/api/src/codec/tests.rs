use super::*;

fn all() -> Vec<Frame<'static>> {
    vec![
        Frame::Register {
            version: 1,
            hooks: event::CONNECT | event::DATA_LINES,
            reports: event::DISCONNECT,
            name: b"trace",
        },
        Frame::Ready {
            version: 1,
            max_frame: 1 << 20,
            timeout_ms: 30000,
        },
        Frame::Refused(b"version"),
        Frame::Connect {
            local: b"127.0.0.1:25",
            remote: b"192.0.2.1:4321",
            hostname: b"mx.example.org",
        },
        Frame::Helo(b"h"),
        Frame::Ehlo(b"e"),
        Frame::Starttls,
        Frame::Auth {
            mechanism: b"PLAIN",
            user: b"u",
        },
        Frame::Mail(b"a@b.c"),
        Frame::Rcpt(b"d@e.f"),
        Frame::Data,
        Frame::DataLines(vec![b"Subject: x", b"", b"..dot"]),
        Frame::DataEnd,
        Frame::Eom(1234),
        Frame::Commit(b"0badcafe"),
        Frame::Rollback,
        Frame::Disconnect,
        Frame::Protocol {
            dir: b'<',
            line: b"QUIT",
        },
        Frame::Tls {
            version: b"TLSv1.3",
            cipher: b"TLS_AES_256_GCM_SHA384",
            bits: 256,
            sni: b"mx.example.org",
            subject: b"CN=client.example.org",
        },
        Frame::AuthResult {
            mechanism: b"LOGIN",
            user: b"u",
            result: b"permfail",
        },
        Frame::Proceed,
        Frame::Reject {
            code: 550,
            text: b"5.7.1 no",
        },
        Frame::Tempfail(b"later"),
        Frame::DisconnectAnswer {
            code: 421,
            text: b"bye",
        },
        Frame::Junk,
        Frame::Rewrite(b"x@y.z"),
        Frame::AddHeader {
            name: b"X-A",
            value: b"1",
        },
        Frame::InsertHeader {
            index: 0,
            name: b"X-B",
            value: b"2",
        },
        Frame::ChangeHeader {
            index: 1,
            name: b"Subject",
            value: b"",
        },
        Frame::ReplaceBody(b"new body\r\n"),
        Frame::AddRcpt(b"n@m.o"),
        Frame::DelRcpt(b"d@e.f"),
        Frame::ChangeFrom(b"z@y.x"),
        Frame::Quarantine(b"suspicious"),
        Frame::Discard,
        Frame::Log(b"hello"),
    ]
}

#[test]
fn round_trip_every_frame_split_anywhere() {
    let mut wire = Vec::new();
    for (i, f) in all().iter().enumerate() {
        encode(i as u64, f, &mut wire);
    }
    for chunk in [1, 2, 3, 7, 13, 64, wire.len()] {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for part in wire.chunks(chunk) {
            d.feed(part);
            while let Some((s, f)) = d.next_frame().unwrap_or_else(|e| panic!("{e}")) {
                let mut one = Vec::new();
                encode(s, &f, &mut one);
                got.push((s, one));
            }
        }
        assert_eq!(got.len(), all().len(), "chunk {chunk}");
        let re: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(re, wire);
    }
}

#[test]
fn bad_frames() {
    assert_eq!(decode(&[0, 0, 0, 1, 0]), Err(WireError::BadLength(1)));
    assert_eq!(
        decode(&[0xff, 0, 0, 0]),
        Err(WireError::BadLength(0xff00_0000))
    );
    let mut w = Vec::new();
    encode(1, &Frame::Proceed, &mut w);
    w[4] = 0x7f;
    assert_eq!(decode(&w), Err(WireError::UnknownKind(0x7f)));
    let mut w = Vec::new();
    encode(1, &Frame::Helo(b"abc"), &mut w);
    w[14] = 9; // string longer than the frame
    assert_eq!(decode(&w), Err(WireError::BadPayload(kind::HELO)));
    let mut w = Vec::new();
    encode(1, &Frame::Proceed, &mut w);
    w.push(0);
    w[3] += 1; // a trailing byte
    assert_eq!(decode(&w), Err(WireError::BadPayload(kind::PROCEED)));
}

#[test]
fn worked_example() {
    // The REGISTER frame shown in smtpd-filters(7).
    let mut w = Vec::new();
    encode(
        0,
        &Frame::Register {
            version: 1,
            hooks: event::CONNECT,
            reports: 0,
            name: b"stub",
        },
        &mut w,
    );
    assert_eq!(
        w,
        [
            0, 0, 0, 0x19, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 4, b's',
            b't', b'u', b'b'
        ]
    );
}
