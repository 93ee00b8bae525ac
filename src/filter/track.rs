//! The transaction events of OpenSMTPD's reports (greeting, identification, tx-begin,
//! tx-mail, tx-rcpt, tx-data), derived as OpenSMTPD derives them: from each reply and
//! the command it answers. Pure: the session's filter side feeds it the lines it
//! reports anyway, and a fresh message id when a transaction opens.

use super::report::{Report, TextReport};

/// The command a reply answers, as far as reports care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cmd {
    /// None yet: the greeting.
    Greeting,
    /// HELO or EHLO, with the name.
    Identify(&'static str, String),
    /// MAIL FROM, with what followed `MAIL FROM:`.
    Mail(String),
    /// RCPT TO, with what followed `RCPT TO:`.
    Rcpt(String),
    /// DATA.
    Data,
    /// Anything else.
    Other,
}

/// Follows a session's commands and replies for its reports.
#[derive(Debug, Clone)]
pub struct Tracker {
    cmd: Cmd,
    /// The open transaction's message id.
    msgid: Option<u32>,
    /// Recipients accepted in it.
    rcpts: u32,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            cmd: Cmd::Greeting,
            msgid: None,
            rcpts: 0,
        }
    }
}

/// What follows `prefix` (ASCII, any case) at the start of `line`.
fn after<'a>(line: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let p = prefix.as_bytes();
    (line.len() >= p.len() && line[..p.len()].eq_ignore_ascii_case(p)).then(|| &line[p.len()..])
}

fn result(code: u16) -> &'static str {
    match code {
        200..=399 => "ok",
        400..=499 => "tempfail",
        _ => "permfail",
    }
}

impl Tracker {
    /// The open transaction's message id, if any.
    pub fn msgid(&self) -> Option<u32> {
        self.msgid
    }

    /// The message of the transaction was stored under `id` (the spool may not have
    /// been able to take the id given).
    pub fn set_msgid(&mut self, id: u32) {
        if self.msgid.is_some() {
            self.msgid = Some(id);
        }
    }

    /// The transaction ended (committed or abandoned): its id, if it had one.
    pub fn end_tx(&mut self) -> Option<u32> {
        self.rcpts = 0;
        self.msgid.take()
    }

    /// A command line of the client (as reported, the credentials of AUTH hidden).
    pub fn command(&mut self, line: &[u8]) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let name = |b: &[u8]| text(b.trim_ascii());
        self.cmd = if let Some(a) = after(line, "HELO ") {
            Cmd::Identify("HELO", name(a))
        } else if let Some(a) = after(line, "EHLO ") {
            Cmd::Identify("EHLO", name(a))
        } else if let Some(a) = after(line, "MAIL FROM:") {
            Cmd::Mail(text(a))
        } else if let Some(a) = after(line, "RCPT TO:") {
            Cmd::Rcpt(text(a))
        } else if line.eq_ignore_ascii_case(b"DATA") {
            Cmd::Data
        } else {
            Cmd::Other
        };
    }

    /// The client's final dot: the reply that follows is the message's.
    pub fn data_end(&mut self) {
        self.cmd = Cmd::Other;
    }

    /// A reply (its first line starts with the code); the reports it makes go to
    /// `out`. `new_id` gives the id of a transaction MAIL FROM opens.
    pub fn reply(&mut self, reply: &[u8], new_id: impl FnOnce() -> u32, out: &mut Vec<Report>) {
        let code = reply
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(0);
        let ok = (200..300).contains(&code);
        match std::mem::replace(&mut self.cmd, Cmd::Other) {
            Cmd::Greeting if code == 220 => {
                let first = reply.split(|&b| b == b'\r' || b == b'\n').next();
                let name = first
                    .and_then(|l| l.get(4..))
                    .and_then(|l| l.split(|&b| b == b' ').next())
                    .unwrap_or_default();
                let name = String::from_utf8_lossy(name).into_owned();
                out.push(Report::Text(TextReport::Greeting(name)));
            }
            Cmd::Identify(method, name) if ok => {
                out.push(Report::Text(TextReport::Identify { method, name }));
            }
            Cmd::Mail(a) if ok => {
                let id = new_id();
                self.msgid = Some(id);
                self.rcpts = 0;
                out.push(Report::Text(TextReport::TxBegin(id)));
                out.push(Report::Text(TextReport::TxMail(id, "ok", a)));
            }
            // Failures are told only inside a transaction, as OpenSMTPD does.
            Cmd::Mail(a) => {
                if let Some(id) = self.msgid {
                    out.push(Report::Text(TextReport::TxMail(id, result(code), a)));
                }
            }
            Cmd::Rcpt(a) => {
                if let Some(id) = self.msgid {
                    self.rcpts += u32::from(ok);
                    out.push(Report::Text(TextReport::TxRcpt(id, result(code), a)));
                }
            }
            Cmd::Data => {
                if let Some(id) = self.msgid.filter(|_| code == 354 || self.rcpts > 0) {
                    out.push(Report::Text(TextReport::TxData(id, result(code))));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog(steps: &[(&str, &str)]) -> Vec<Report> {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        let mut n = 0xbeef;
        for (cmd, reply) in steps {
            match *cmd {
                "" => {}
                "." => t.data_end(),
                c => t.command(c.as_bytes()),
            }
            t.reply(
                reply.as_bytes(),
                || {
                    n += 1;
                    n
                },
                &mut out,
            );
            if *cmd == "." && reply.starts_with('2') {
                t.end_tx();
            }
        }
        out
    }

    fn text(r: Vec<Report>) -> Vec<TextReport> {
        r.into_iter()
            .map(|r| match r {
                Report::Text(t) => t,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_transaction_as_opensmtpd_reports_it() {
        use TextReport::*;
        let r = dialog(&[
            ("", "220 mx.example.org ESMTP smtpd"),
            (
                "EHLO client.example",
                "250-mx.example.org Hello\r\n250 8BITMIME",
            ),
            ("MAIL FROM:<a@b> SIZE=10", "250 2.0.0 Ok"),
            ("RCPT TO:<x@y>", "550 5.1.1 no"),
            ("rcpt to:<c@d>", "250 2.1.5 Ok"),
            ("DATA", "354 go on"),
            (".", "250 2.0.0 queued"),
            ("MAIL FROM:<>", "250 ok"),
            ("NOOP", "250 ok"),
            ("DATA", "503 5.5.1 no recipients"),
        ]);
        assert_eq!(
            text(r),
            [
                Greeting("mx.example.org".into()),
                Identify {
                    method: "EHLO",
                    name: "client.example".into()
                },
                TxBegin(0xbef0),
                TxMail(0xbef0, "ok", "<a@b> SIZE=10".into()),
                TxRcpt(0xbef0, "permfail", "<x@y>".into()),
                TxRcpt(0xbef0, "ok", "<c@d>".into()),
                TxData(0xbef0, "ok"),
                TxBegin(0xbef1),
                TxMail(0xbef1, "ok", "<>".into()),
            ]
        );
    }

    #[test]
    fn failures_outside_a_transaction_are_not_told() {
        let r = dialog(&[
            ("", "554 go away"),
            ("HELO x", "501 bad"),
            ("MAIL FROM:<a@b>", "451 later"),
            ("RCPT TO:<a@b>", "503 first MAIL"),
        ]);
        assert!(r.is_empty(), "{r:?}");
        let mut t = Tracker::default();
        t.set_msgid(5);
        assert_eq!(t.msgid(), None);
        t.command(b"MAIL FROM:<a@b>");
        t.reply(b"250 ok", || 7, &mut Vec::new());
        t.set_msgid(9);
        assert_eq!(t.end_tx(), Some(9));
        assert_eq!(t.end_tx(), None);
    }
}
