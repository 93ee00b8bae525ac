//! OpenSMTPD's text filter protocol on arbitrary bytes: the line parser and the pipe's
//! text side (registration, tokens, message lines) never panic, take no line longer
//! than the bound, and every field written back to a filter stays on its line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::filter::limit::LogLimit;
use smtpd::filter::opensmtpd;
use smtpd::filter::pipe_text::TextSide;
use smtpd::filter::text::{self, Line, Stamp, MAX_LINE};
use std::time::{Duration, Instant};

const TS: Stamp = Stamp { secs: 1, micros: 2 };

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    // Each line on its own.
    for line in stream.split(|&b| b == b'\n') {
        match text::parse(line) {
            Ok(Line::Result { verdict, .. }) => {
                for phase in text::PHASES {
                    let _ = opensmtpd::decision(&verdict, phase);
                }
            }
            Ok(Line::DataLine { line: l, .. }) => {
                if let Some(back) = opensmtpd::returned_line(l) {
                    assert!(back.len() <= l.len());
                }
            }
            Ok(_) => {}
            Err(_) => {}
        }
        // A field written back never ends the line it is on.
        let mut out = Vec::new();
        text::filter(&mut out, TS, "data-line", 1, 2, &[line]);
        text::report(&mut out, TS, "tx-mail", 1, &[line, line]);
        opensmtpd::data_line(&mut out, TS, 1, 2, Some(line));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 3);
    }
    // The whole stream through a pipe's text side, in chunks.
    let mut side = TextSide::default();
    let mut logs = LogLimit::new(100, Duration::from_secs(10));
    let mut out = Vec::new();
    let now = Instant::now();
    for chunk in stream.chunks(usize::from(split) + 1) {
        side.feed(chunk);
        match side.decode(1024, "fuzz", &mut logs, now, &mut out) {
            Ok(d) => assert!(d.lines <= 1024),
            // After an error the filter is failed, by contract.
            Err(_) => return,
        }
        // A chunk holds fewer lines than a call takes: what is left is a partial line
        // within the bound.
        assert!(!side.has_line());
        assert!(side.pending() <= MAX_LINE);
    }
});
