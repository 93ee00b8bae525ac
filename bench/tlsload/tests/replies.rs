//! The client refuses what it was not asked to accept: a scripted plaintext server on
//! 127.0.0.1 answers with the wrong codes, and every step must fail with an error.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use tlsload::smtp::Session;
use tlsload::tls::Client;

/// A one-connection server: sends `greeting`, then for each line it reads, the next
/// reply of `replies` (none left: it closes).
fn server(greeting: &'static str, replies: &'static [&'static str]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(greeting.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        for reply in replies {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            w.write_all(reply.as_bytes()).unwrap();
        }
    });
    addr
}

fn err<T>(r: Result<T, tlsload::Error>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.0,
    }
}

#[test]
fn greeting_must_be_220() {
    let addr = server("554 go away\r\n", &[]);
    let client = Client::new().unwrap();
    let e = err(Session::connect(addr).unwrap().starttls(&client, "c.test"));
    assert!(e.contains("greeting") && e.contains("554"), "{e}");
}

#[test]
fn starttls_must_be_offered() {
    let addr = server("220 x\r\n", &["250-x\r\n250 PIPELINING\r\n"]);
    let client = Client::new().unwrap();
    let e = err(Session::connect(addr).unwrap().starttls(&client, "c.test"));
    assert!(e.contains("STARTTLS not offered"), "{e}");
}

#[test]
fn starttls_must_get_220() {
    let addr = server(
        "220 x\r\n",
        &["250-x\r\n250 STARTTLS\r\n", "454 4.7.0 no TLS\r\n"],
    );
    let client = Client::new().unwrap();
    let e = err(Session::connect(addr).unwrap().starttls(&client, "c.test"));
    assert!(
        e.contains("STARTTLS: expected 220") && e.contains("454"),
        "{e}"
    );
}

#[test]
fn handshake_with_a_plaintext_server_fails() {
    // after the 220 to STARTTLS the server answers the ClientHello in plaintext
    let addr = server(
        "220 x\r\n",
        &[
            "250-x\r\n250 STARTTLS\r\n",
            "220 go ahead\r\n",
            "500 what?\r\n",
        ],
    );
    let client = Client::new().unwrap();
    let e = err(Session::connect(addr).unwrap().starttls(&client, "c.test"));
    assert!(e.contains("TLS handshake"), "{e}");
}

#[test]
fn a_refused_command_is_an_error() {
    let addr = server("220 x\r\n", &["550 5.1.1 no such user\r\n"]);
    let mut s = Session::connect(addr).unwrap();
    s.expect(220, "greeting").unwrap();
    let e = err(s.command("RCPT TO:<u@bench.test>", 250));
    assert!(e.contains("expected 250") && e.contains("550"), "{e}");
}

#[test]
fn a_closed_connection_is_an_error() {
    let addr = server("220-x\r\n", &[]);
    let mut s = Session::connect(addr).unwrap();
    let e = err(s.reply());
    assert!(e.contains("closed"), "{e}");
}
