//! What a session keeps for its filters, in one place: its chain, the filters its
//! message's lines go through, the lines gathered for the first of them, the end of
//! the message waiting for the last, and the events observing filters get.

use super::conn::{BATCH_MAX_BYTES, BATCH_MAX_LINES};
use crate::filter::phase::FilterQuery;
use crate::filter::pipe::Lines;
use crate::filter::report::{AuthResult, Report, TextReport, TlsFacts};
use crate::filter::track::Tracker;

/// A session's filter state.
#[derive(Debug, Default)]
pub struct FilterSide {
    /// The filters this session goes through, in order.
    pub chain: Vec<usize>,
    /// The filters the message's lines go through, in order (set at DATA).
    pub data_chain: Vec<usize>,
    /// A filter of the chain observes protocol lines and rollbacks.
    pub observe: bool,
    /// A query the session made, for the loop to run through the chain.
    pub(super) query: Option<FilterQuery>,
    /// The phase of the last query taken by the loop (for `filter-response`).
    pub asked: Option<crate::filter::phase::Phase>,
    /// Lines waiting to be sent to the first data filter.
    pub(super) batch: Lines,
    /// Their octets.
    pub(super) batch_bytes: usize,
    /// A content line longer than the input buffer, gathered for the data filters.
    pub(super) long_line: Vec<u8>,
    /// The final dot was seen (with the pipelining flag); the chain's end is awaited.
    pub(super) data_end: Option<bool>,
    /// The end marker was handed to the loop.
    pub(super) data_end_sent: bool,
    /// Octets of filtered content stored.
    pub(super) filtered_bytes: u64,
    /// Lines were just sent to a filter: input held back may be taken now.
    pub(super) resume: bool,
    /// The message's body is binary (BINARYMIME): the filters' lines after the header
    /// section are stored with CR LF, as the body came.
    binary_body: bool,
    /// The filters' output passed the end of the header section.
    filtered_in_body: bool,
    /// The message was dropped before its end (a chunked message refused or reset
    /// before its LAST chunk): the chain still gets its end, and its result is
    /// ignored.
    pub(super) abandoned: bool,
    /// Events for observing filters since the loop last took them.
    reports: Vec<Report>,
    /// The transaction events of OpenSMTPD's reports, from commands and replies.
    tracker: Tracker,
}

impl FilterSide {
    /// Events for observing filters since the last call.
    pub fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    /// An event for the filters of the chain that observe it (none without a chain).
    /// A rollback ends the transaction OpenSMTPD's reports know.
    pub fn report(&mut self, r: Report) {
        if self.chain.is_empty() {
            return;
        }
        let r = match r {
            Report::Rollback(_) => Report::Rollback(self.tracker.end_tx()),
            r => r,
        };
        self.reports.push(r);
    }

    /// A command line of the client, for the PROTOCOL report, as the session shows it:
    /// the credentials of SMTP AUTH already hidden ([`crate::smtp::sasl::redact`]).
    pub(super) fn report_client_line(&mut self, shown: &[u8]) {
        self.report(Report::Protocol(b'<', shown.to_vec()));
        self.tracker.command(shown);
    }

    /// A reply, for the PROTOCOL report, and the transaction events it makes.
    pub(super) fn report_reply(&mut self, text: &[u8]) {
        if self.chain.is_empty() {
            return;
        }
        self.reports.push(Report::Protocol(b'>', text.to_vec()));
        let new_id = || loop {
            let id = crate::sys::random_u64() as u32;
            if id != 0 {
                break id;
            }
        };
        self.tracker.reply(text, new_id, &mut self.reports);
    }

    /// A message was opened: `binary`, its body is BINARYMIME; `chunked`, by BDAT,
    /// whose first chunk is where OpenSMTPD's reports have the transaction's data
    /// begin (`tx-data`), since it has no 354.
    pub(super) fn content_opened(&mut self, binary: bool, chunked: bool) {
        self.binary_body = binary;
        self.filtered_in_body = false;
        if chunked && !self.chain.is_empty() {
            if let Some(id) = self.tracker.msgid() {
                self.reports
                    .push(Report::Text(TextReport::TxData(id, "ok")));
            }
        }
    }

    /// The open message was dropped while its lines were going through the data
    /// filters: the chain gets the end of them, and its output and verdict are
    /// ignored; input waits for that end.
    pub(super) fn abandon(&mut self) {
        if !self.data_chain.is_empty() && self.data_end.is_none() {
            self.long_line = Vec::new();
            self.data_end = Some(false);
            self.abandoned = true;
        }
    }

    /// Appends lines the last data filter returned to `buf`, as the spool keeps them:
    /// LF line ends, but CR LF in the body of a binary message.
    pub(super) fn filtered_into(&mut self, lines: &Lines, buf: &mut Vec<u8>) {
        if !self.binary_body {
            buf.extend_from_slice(lines.text());
            return;
        }
        for l in lines.iter() {
            buf.extend_from_slice(l);
            if self.filtered_in_body {
                buf.extend_from_slice(b"\r\n");
            } else {
                buf.push(b'\n');
                self.filtered_in_body = l.is_empty();
            }
        }
    }

    /// The client's final dot (reported by OpenSMTPD's protocol only).
    pub(super) fn report_data_end(&mut self) {
        self.report(Report::Text(TextReport::DataEnd));
        self.tracker.data_end();
    }

    /// The id OpenSMTPD's reports gave the open transaction, for its message to be
    /// stored under.
    pub fn tx_msgid(&self) -> Option<u32> {
        self.tracker.msgid()
    }

    /// The open transaction's message was stored under `id`.
    pub fn set_tx_msgid(&mut self, id: u32) {
        self.tracker.set_msgid(id);
    }

    /// The open transaction's message was committed.
    pub fn committed(&mut self) {
        self.tracker.end_tx();
    }

    /// The session ends: what observers are told before it disconnects (the events
    /// left, and the rollback of a transaction still open).
    pub fn take_final_reports(&mut self) -> Vec<Report> {
        if let Some(id) = self.tracker.end_tx() {
            self.report(Report::Text(TextReport::TxRollback(id)));
        }
        self.take_reports()
    }

    /// The session's TLS handshake completed: the filters of its chain that registered
    /// the TLS report are told, before the events of the commands that follow.
    pub fn report_tls(&mut self, facts: TlsFacts) {
        self.report(Report::Tls(facts));
    }

    /// An AUTH exchange in which the client gave credentials ended with a reply of
    /// `code` (235, 535, 454...): the filters of its chain that registered AUTH_RESULT
    /// are told. `user` is the authentication identity the client gave, empty when it
    /// gave none; never pass the password.
    pub fn report_auth(&mut self, mechanism: &str, user: &str, code: u16) {
        self.report(Report::Auth {
            mechanism: mechanism.to_string(),
            user: user.to_string(),
            result: AuthResult::of_reply(code),
        });
    }

    /// Whether the lines gathered for the data filters fill the batch: the session
    /// reads no more until they are taken.
    pub(super) fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH_MAX_LINES || self.batch_bytes >= BATCH_MAX_BYTES
    }

    /// Lines for the first data filter, and whether the end marker follows them.
    pub fn take_batch(&mut self) -> Option<(Lines, bool)> {
        let end = self.data_end.is_some() && !self.data_end_sent;
        if self.batch.is_empty() && !end {
            return None;
        }
        self.data_end_sent |= end;
        self.batch_bytes = 0;
        self.resume = true;
        Some((std::mem::take(&mut self.batch), end))
    }

    /// Gives back a batch taken with [`FilterSide::take_batch`] once it was sent, so that
    /// the next one reuses its memory.
    pub fn return_batch(&mut self, mut lines: Lines) {
        if self.batch.is_empty() {
            lines.clear();
            self.batch = lines;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol(r: &[Report]) -> Vec<String> {
        r.iter()
            .map(|r| match r {
                Report::Protocol(d, l) => format!("{} {}", *d as char, l.escape_ascii()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_auth_exchange_reaches_observers_in_order() {
        let mut f = FilterSide {
            chain: vec![0],
            ..FilterSide::default()
        };
        f.report_client_line(b"AUTH PLAIN (hidden)");
        f.report_reply(b"235 2.7.0 Authentication successful");
        f.report_auth("PLAIN", "alice", 235);
        f.report_client_line(b"MAIL FROM:<alice@example.org>");
        assert_eq!(
            protocol(&f.take_reports()),
            [
                "< AUTH PLAIN (hidden)",
                "> 235 2.7.0 Authentication successful",
                "Auth { mechanism: \"PLAIN\", user: \"alice\", result: Ok }",
                "< MAIL FROM:<alice@example.org>",
            ]
        );
    }

    #[test]
    fn reports_are_gathered_only_for_a_session_with_filters() {
        let mut f = FilterSide::default();
        f.report_tls(TlsFacts::new(
            "TLSv1_3",
            "TLS13_AES_128_GCM_SHA256",
            None,
            None,
        ));
        f.report_auth("LOGIN", "bob", 454);
        assert!(f.take_reports().is_empty());
        f.chain = vec![2];
        let tls = TlsFacts::new("TLSv1_3", "TLS13_AES_128_GCM_SHA256", None, None);
        f.report_tls(tls.clone());
        f.report_auth("LOGIN", "bob", 454);
        assert_eq!(
            f.take_reports(),
            [
                Report::Tls(tls),
                Report::Auth {
                    mechanism: "LOGIN".into(),
                    user: "bob".into(),
                    result: AuthResult::Tempfail,
                },
            ]
        );
    }
}
