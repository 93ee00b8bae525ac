//! tls-source: smtp-source over STARTTLS (see the crate documentation).
//!
//! Usage: tls-source [-d] [-s SESSIONS] [-m MESSAGES] [-l SIZE] [-M HELO] [-f FROM]
//! [-t TO] HOST:PORT
//!
//! SESSIONS threads send MESSAGES messages in all, each of SIZE bytes of body; every
//! session makes STARTTLS first. With -d a session carries message after message,
//! otherwise each message has its own connection. Each reply is checked (220 greeting,
//! 250 to EHLO, 220 to STARTTLS, 250 to EHLO, MAIL and RCPT, 354 to DATA, 250 after
//! the message, 221 to QUIT); the first failure stops every session, is printed, and
//! the exit status is 1. Nothing is printed otherwise.

use std::process::ExitCode;
use std::sync::Arc;

use tlsload::message::Template;
use tlsload::smtp::Session;
use tlsload::source::{self, Options, Source};
use tlsload::tls::Client;
use tlsload::Error;

struct TlsSource {
    o: Arc<Options>,
    t: Template,
    client: Client,
}

impl Source for TlsSource {
    type Session = Session;

    fn open(&self) -> Result<Session, Error> {
        Session::connect(self.o.addr)?.starttls(&self.client, &self.o.helo)
    }

    /// MAIL, RCPT, DATA, the message, each reply checked.
    fn send(&self, s: &mut Session, i: usize) -> Result<(), Error> {
        s.command(&format!("MAIL FROM:<{}>", self.o.from), 250)?;
        s.command(&format!("RCPT TO:<{}>", self.o.to), 250)?;
        s.command("DATA", 354)?;
        s.send(&self.t.message(i))?;
        s.expect(250, "end of DATA")?;
        Ok(())
    }

    fn quit(&self, s: Session) -> Result<(), Error> {
        s.quit()
    }
}

fn run(args: &[String]) -> Result<String, Error> {
    let o = Arc::new(Options::parse(args, |_, _| Ok(false))?);
    let src = TlsSource {
        t: Template::new(o.size, &o.from, &o.to, &o.helo),
        client: Client::new()?,
        o: o.clone(),
    };
    source::run("tls-source", o, Arc::new(src))
}

fn main() -> ExitCode {
    tlsload::main("tls-source", run)
}
