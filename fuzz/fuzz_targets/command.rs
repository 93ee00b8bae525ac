//! `Command::parse` on arbitrary bytes: it must never panic, and every mailbox it
//! returns must pass the crate's own validators (of RFC 6531's UTF-8 addresses).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::mail::address::{valid_utf8_domain as valid_domain, valid_utf8_local as valid_local};
use smtpd::smtp::command::Command;

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = Command::parse(data) else {
        return;
    };
    match cmd {
        Command::Mail(m, p) => {
            if !m.is_null() {
                assert!(
                    valid_local(&m.local),
                    "MAIL local part {:?} fails valid_local",
                    m.local
                );
                assert!(
                    valid_domain(&m.domain),
                    "MAIL domain {:?} fails valid_domain",
                    m.domain
                );
            }
            if let Some(envid) = &p.envid {
                assert!(!envid.is_empty() && envid.len() <= 100, "ENVID {envid:?}");
            }
        }
        Command::Rcpt(m, _) => {
            if m.local == "postmaster" && m.domain.is_empty() {
                return;
            }
            assert!(!m.is_null(), "RCPT accepted the null path");
            assert!(
                valid_local(&m.local),
                "RCPT local part {:?} fails valid_local",
                m.local
            );
            assert!(
                valid_domain(&m.domain),
                "RCPT domain {:?} fails valid_domain",
                m.domain
            );
        }
        Command::Helo(d) | Command::Ehlo(d) => {
            assert!(!d.is_empty() && d.len() <= 255, "HELO name {d:?}");
            assert!(d.bytes().all(|b| b.is_ascii_graphic()), "HELO name {d:?}");
        }
        _ => {}
    }
});
