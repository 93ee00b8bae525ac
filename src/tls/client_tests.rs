//! Real handshakes between a client of `client_conn` and a rustls server, in memory.

use super::*;
use crate::tls::dane::{DANE_EE, DANE_TA};
use crate::tls::subject::spki;
use crate::tls::testcerts::{ca, handshake, leaf, server_config, Issued};
use ring::digest;
use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection};

const MX: &str = "mx.example.test";

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A client configuration with every version and suite, trusting `roots`.
fn client_tls(roots: Arc<RootCertStore>) -> ClientTls {
    ClientTls::new(&TlsVersion::ALL, &Suite::ALL, roots, None).unwrap()
}

/// A server presenting `chain`, the key of whose leaf is `key`.
fn server(chain: &[&Issued], key: &Issued) -> ServerConnection {
    let chain = chain.iter().map(|c| c.der()).collect();
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    ServerConnection::new(server_config(chain, key.key_der(), &versions)).unwrap()
}

/// The handshake of a client with `verify` against `server`; the facts on success.
fn run(
    cfg: &ClientTls,
    server: ServerConnection,
    verify: Verify,
) -> Result<TlsClientFacts, String> {
    let (client, outcome) = client_conn(cfg, Some(MX), verify).unwrap();
    let (c, _s, r) = handshake(client, server);
    r?;
    Ok(TlsClientFacts::of(&c, &outcome).unwrap())
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
}

fn tlsa(usage: u8, selector: u8, mtype: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage,
        selector,
        mtype,
        data,
    }
}

fn dane(records: Vec<Tlsa>) -> Verify {
    Verify::Dane {
        tlsa: records,
        names: names(&[MX, "example.test"]),
    }
}

#[test]
fn opportunistic_accepts_a_self_signed_certificate() {
    let cert = leaf(&[MX], None, false);
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let verify = Verify::Opportunistic {
        names: names(&[MX]),
    };
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::No);
    assert_eq!(facts.version, "TLSv1.3");
    assert_eq!(facts.cipher, "TLS_AES_256_GCM_SHA384");
    assert_eq!(facts.openssl_cipher, "TLS_AES_256_GCM_SHA384");
    assert_eq!(facts.bits, 256);
    assert_eq!(facts.peer_subject.as_deref(), Some("/CN=mx.example.test"));
}

#[test]
fn opportunistic_records_a_passing_pkix_check() {
    let root = ca("Test CA");
    let cert = leaf(&[MX], Some(&root), false);
    let cfg = client_tls(root.roots());
    let verify = Verify::Opportunistic {
        names: names(&[MX]),
    };
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::Pkix);
    // The same certificate for another name: accepted, not verified.
    let verify = Verify::Opportunistic {
        names: names(&["other.test"]),
    };
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::No);
}

#[test]
fn pkix_with_a_ca() {
    let root = ca("Test CA");
    let cert = leaf(&[MX], Some(&root), false);
    let cfg = client_tls(root.roots());
    let verify = Verify::Pkix {
        roots: None,
        names: names(&["mx2.example.test", MX]),
    };
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::Pkix);
    assert!(facts.verified.is_verified());
    // Roots given with the check (MTA-STS) replace those of the configuration.
    let empty = client_tls(Arc::new(RootCertStore::empty()));
    let verify = Verify::Pkix {
        roots: Some(root.roots()),
        names: names(&[MX]),
    };
    assert!(run(&empty, server(&[&cert], &cert), verify).is_ok());
}

#[test]
fn pkix_refuses_the_wrong_name_an_unknown_issuer_and_expiry() {
    let root = ca("Test CA");
    let cert = leaf(&[MX], Some(&root), false);
    let cfg = client_tls(root.roots());
    let verify = Verify::Pkix {
        roots: None,
        names: names(&["other.example.test"]),
    };
    let e = run(&cfg, server(&[&cert], &cert), verify).unwrap_err();
    assert!(e.starts_with("client: "), "{e}");
    assert!(e.contains("valid for none of: other.example.test"), "{e}");

    let own = leaf(&[MX], None, false);
    let verify = Verify::Pkix {
        roots: None,
        names: names(&[MX]),
    };
    let e = run(&cfg, server(&[&own], &own), verify.clone()).unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");

    let old = leaf(&[MX], Some(&root), true);
    let e = run(&cfg, server(&[&old], &old), verify).unwrap_err();
    assert!(e.contains("certificate expired"), "{e}");
}

#[test]
fn dane_ee_spki_sha256() {
    // DANE-EE checks neither name, nor issuer, nor dates.
    let cert = leaf(&["elsewhere.invalid"], None, true);
    let key = spki(cert.cert.der()).unwrap().to_vec();
    assert_eq!(key, cert.key.public_key_der());
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let verify = dane(vec![
        tlsa(DANE_EE, 1, 1, sha256(b"another key")),
        tlsa(DANE_EE, 1, 1, sha256(&key)),
    ]);
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::DaneEe);
}

#[test]
fn dane_ee_mismatch_fails() {
    let cert = leaf(&[MX], None, false);
    let other = leaf(&[MX], None, false);
    let cfg = client_tls(other.roots());
    let key = spki(other.cert.der()).unwrap().to_vec();
    let verify = dane(vec![tlsa(DANE_EE, 1, 1, sha256(&key))]);
    let e = run(&cfg, server(&[&cert], &cert), verify).unwrap_err();
    assert!(e.contains("DANE: no TLSA record matches"), "{e}");
}

#[test]
fn dane_ee_whole_certificate() {
    let cert = leaf(&[MX], None, false);
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let verify = dane(vec![tlsa(DANE_EE, 0, 1, sha256(cert.cert.der()))]);
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::DaneEe);
    let full = digest::digest(&digest::SHA512, cert.cert.der())
        .as_ref()
        .to_vec();
    let verify = dane(vec![tlsa(DANE_EE, 0, 2, full)]);
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::DaneEe);
    let verify = dane(vec![tlsa(DANE_EE, 0, 0, cert.cert.der().to_vec())]);
    assert!(run(&cfg, server(&[&cert], &cert), verify).is_ok());
}

#[test]
fn dane_ta_with_a_ca_certificate() {
    let root = ca("Test CA");
    let cert = leaf(&[MX], Some(&root), false);
    // The client trusts nothing else: DANE-TA is the record's anchor only.
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let record = || vec![tlsa(DANE_TA, 0, 1, sha256(root.cert.der()))];
    let facts = run(&cfg, server(&[&cert, &root], &cert), dane(record())).unwrap();
    assert_eq!(facts.verified, Verified::DaneTa);

    // The name is checked: neither the TLSA base domain nor the next-hop domain.
    let wrong = Verify::Dane {
        tlsa: record(),
        names: names(&["mx.other.test", "other.test"]),
    };
    let e = run(&cfg, server(&[&cert, &root], &cert), wrong).unwrap_err();
    assert!(
        e.contains("DANE: DANE-TA: the certificate is valid for none"),
        "{e}"
    );

    // The anchor must be in the chain the server sends.
    let e = run(&cfg, server(&[&cert], &cert), dane(record())).unwrap_err();
    assert!(e.contains("no TLSA record matches"), "{e}");

    // The dates are checked.
    let old = leaf(&[MX], Some(&root), true);
    let e = run(&cfg, server(&[&old, &root], &old), dane(record())).unwrap_err();
    assert!(
        e.contains("DANE-TA: ") && e.contains("certificate expired"),
        "{e}"
    );

    // A leaf that another CA issued does not chain to the anchor.
    let stranger = ca("Other CA");
    let cert2 = leaf(&[MX], Some(&stranger), false);
    let e = run(&cfg, server(&[&cert2, &root], &cert2), dane(record())).unwrap_err();
    assert!(
        e.contains("DANE-TA: ") && e.contains("UnknownIssuer"),
        "{e}"
    );

    // By the anchor's public key.
    let key = spki(root.cert.der()).unwrap().to_vec();
    let verify = dane(vec![tlsa(DANE_TA, 1, 1, sha256(&key))]);
    let facts = run(&cfg, server(&[&cert, &root], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::DaneTa);
}

#[test]
fn dane_without_a_usable_record_encrypts_only() {
    let cert = leaf(&[MX], None, false);
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let der = cert.cert.der();
    let verify = dane(vec![
        // PKIX-TA and PKIX-EE are unusable in SMTP; so is a bad digest length.
        tlsa(0, 0, 1, sha256(der)),
        tlsa(1, 0, 1, sha256(der)),
        tlsa(DANE_EE, 0, 1, vec![1, 2, 3]),
        tlsa(DANE_EE, 7, 1, sha256(der)),
    ]);
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.verified, Verified::No);
}

#[test]
fn tls12_and_the_server_name() {
    let cert = leaf(&[MX], None, false);
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let tls12 = server_config(vec![cert.der()], cert.key_der(), &[&rustls::version::TLS12]);
    let verify = Verify::Opportunistic {
        names: names(&[MX]),
    };
    let (client, outcome) = client_conn(&cfg, Some("MX.example.test."), verify.clone()).unwrap();
    let (c, s, r) = handshake(client, ServerConnection::new(tls12).unwrap());
    r.unwrap();
    let facts = TlsClientFacts::of(&c, &outcome).unwrap();
    assert_eq!(facts.version, "TLSv1.2");
    assert_eq!(facts.cipher, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384");
    assert_eq!(facts.openssl_cipher, "ECDHE-ECDSA-AES256-GCM-SHA384");
    let rustls::Connection::Server(s) = s else {
        panic!("not a server")
    };
    assert_eq!(s.server_name(), Some("mx.example.test"));

    // Without a name, no server name extension.
    let (client, _) = client_conn(&cfg, None, verify).unwrap();
    let (_, s, r) = handshake(client, server(&[&cert], &cert));
    r.unwrap();
    let rustls::Connection::Server(s) = s else {
        panic!("not a server")
    };
    assert_eq!(s.server_name(), None);
}

#[test]
fn versions_and_suites_of_the_configuration() {
    let cert = leaf(&[MX], None, false);
    let roots = Arc::new(RootCertStore::empty());
    // TLS 1.3 only against a TLS 1.2 server: no common version.
    let cfg = ClientTls::new(&[TlsVersion::V13], &Suite::ALL, roots.clone(), None).unwrap();
    let tls12 = server_config(vec![cert.der()], cert.key_der(), &[&rustls::version::TLS12]);
    let verify = Verify::Opportunistic { names: vec![] };
    let (client, _) = client_conn(&cfg, Some(MX), verify.clone()).unwrap();
    assert!(handshake(client, ServerConnection::new(tls12).unwrap())
        .2
        .is_err());
    // One suite: the one negotiated.
    let cfg = ClientTls::new(
        &TlsVersion::ALL,
        &[Suite::Tls13Chacha20],
        roots.clone(),
        None,
    )
    .unwrap();
    let facts = run(&cfg, server(&[&cert], &cert), verify).unwrap();
    assert_eq!(facts.cipher, "TLS_CHACHA20_POLY1305_SHA256");
    // TLS 1.2 with TLS 1.3 suites only cannot be.
    assert!(ClientTls::new(&[TlsVersion::V12], &[Suite::Tls13Aes128Gcm], roots, None).is_err());
}

/// The protocol versions a ClientHello record offers: its `supported_versions`
/// extension, or its legacy version without one.
fn offered_versions(hello: &[u8]) -> Vec<u16> {
    let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    assert_eq!(hello[0], 0x16, "a handshake record");
    assert_eq!(hello[5], 1, "a ClientHello");
    let legacy = be16(hello, 9);
    let mut at = 11 + 32;
    at += 1 + usize::from(hello[at]); // session id
    at += 2 + usize::from(be16(hello, at)); // cipher suites
    at += 1 + usize::from(hello[at]); // compression methods
    let end = at + 2 + usize::from(be16(hello, at));
    at += 2;
    while at < end {
        let (kind, len) = (be16(hello, at), usize::from(be16(hello, at + 2)));
        if kind == 0x002b {
            let list = &hello[at + 5..at + 4 + len];
            return list.chunks(2).map(|v| be16(v, 0)).collect();
        }
        at += 4 + len;
    }
    vec![legacy]
}

#[test]
fn tls11_is_never_negotiated() {
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let verify = Verify::Opportunistic { names: vec![] };
    let (client, _) = client_conn(&cfg, Some(MX), verify.clone()).unwrap();
    let mut c = rustls::Connection::Client(client);
    let mut hello = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut hello).unwrap();
    }
    assert_eq!(offered_versions(&hello), vec![0x0304, 0x0303]);
    let cfg12 = ClientTls::new(
        &[TlsVersion::V12],
        &Suite::ALL,
        Arc::new(RootCertStore::empty()),
        None,
    )
    .unwrap();
    let (client, _) = client_conn(&cfg12, Some(MX), verify.clone()).unwrap();
    let mut c12 = rustls::Connection::Client(client);
    let mut hello = Vec::new();
    while c12.wants_write() {
        c12.write_tls(&mut hello).unwrap();
    }
    assert!(offered_versions(&hello).iter().all(|v| *v == 0x0303));

    // A server that answers with TLS 1.1 is refused.
    let mut body = vec![0x03, 0x02];
    body.extend([7u8; 32]);
    body.extend([0x00, 0xc0, 0x2f, 0x00]);
    let mut hs = vec![2, 0, 0, body.len() as u8];
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x02, 0, hs.len() as u8];
    record.extend(hs);
    let mut rd = &record[..];
    c.read_tls(&mut rd).unwrap();
    let e = c.process_new_packets().unwrap_err();
    assert!(c.is_handshaking(), "{e}");
    assert!(c.protocol_version().is_none());
}

#[test]
fn a_client_certificate_for_servers_that_ask() {
    let root = ca("Client CA");
    let mine = leaf(&["relay.example.test"], Some(&root), false);
    let provider = crate::tls::provider(&Suite::ALL);
    let key = CertifiedKey::from_der(vec![mine.der()], mine.key_der(), &provider).unwrap();
    let cert = leaf(&[MX], None, false);
    let verifier = WebPkiClientVerifier::builder_with_provider(root.roots(), Arc::new(provider))
        .build()
        .unwrap();
    let provider = Arc::new(crate::tls::provider(&Suite::ALL));
    let scfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der()], cert.key_der())
        .unwrap();
    let scfg = Arc::new(scfg);
    let verify = Verify::Opportunistic { names: vec![] };
    let roots = Arc::new(RootCertStore::empty());
    let with = ClientTls::new(
        &TlsVersion::ALL,
        &Suite::ALL,
        roots.clone(),
        Some(Arc::new(key)),
    )
    .unwrap();
    let (client, _) = client_conn(&with, Some(MX), verify.clone()).unwrap();
    let (_, s, r) = handshake(client, ServerConnection::new(scfg.clone()).unwrap());
    r.unwrap();
    let shown = s.peer_certificates().and_then(|c| c.first()).cloned();
    assert_eq!(shown, Some(mine.der()));
    // Without one, that server refuses.
    let without = client_tls(roots);
    let (client, _) = client_conn(&without, Some(MX), verify).unwrap();
    let (_, _, r) = handshake(client, ServerConnection::new(scfg).unwrap());
    assert!(r.is_err());
}

#[test]
fn bad_server_names_are_refused() {
    let cfg = client_tls(Arc::new(RootCertStore::empty()));
    let verify = Verify::Opportunistic { names: vec![] };
    assert!(client_conn(&cfg, Some("bad name"), verify.clone()).is_err());
    assert!(client_conn(&cfg, Some(""), verify).is_err());
}

#[test]
fn verified_words() {
    let words: Vec<&str> = [
        Verified::No,
        Verified::Pkix,
        Verified::DaneEe,
        Verified::DaneTa,
    ]
    .iter()
    .map(|v| {
        assert_eq!(Verified::from_u8(v.to_u8()), *v);
        v.as_str()
    })
    .collect();
    assert_eq!(words, ["no", "pkix", "dane-ee", "dane-ta"]);
    assert_eq!(Outcome::default().verified(), Verified::No);
}
