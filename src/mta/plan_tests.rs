use super::*;
use crate::config::tls::{Suite, TlsVersion};
use crate::mta::mx::Tlsa;
use rustls::RootCertStore;

fn config() -> Arc<ClientTls> {
    let roots = Arc::new(RootCertStore::empty());
    Arc::new(
        ClientTls::new(&TlsVersion::ALL, &Suite::ALL, roots, None)
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn mx_route(security: Security) -> Route {
    Route {
        action: "out".into(),
        target: Target::Mx("example.org".into()),
        proto: Proto::Smtp,
        helo: "me.example.net".into(),
        security,
        label: None,
    }
}

fn candidate(host: &str, last: u8) -> Candidate {
    Candidate {
        host: host.into(),
        addr: IpAddr::from([192, 0, 2, last]),
        pref: 10,
        dane: Dane::None,
    }
}

fn dane(host: &str, last: u8) -> Candidate {
    Candidate {
        dane: Dane::Tlsa {
            base: host.into(),
            records: vec![Tlsa {
                usage: 3,
                selector: 1,
                mtype: 1,
                data: vec![0; 32],
            }],
        },
        ..candidate(host, last)
    }
}

fn policy(mode: Mode, mx: &[&str]) -> Policy {
    Policy {
        mode,
        mx: mx.iter().map(|s| s.to_string()).collect(),
        max_age: 86_400,
    }
}

/// What a plan says, in words: (policy, required, how it verifies, names, SNI,
/// reported under `testing`).
type Words = (
    &'static str,
    bool,
    &'static str,
    Vec<String>,
    Option<String>,
    bool,
);

fn describe(p: &TlsPlan) -> Words {
    let (how, names) = match &p.verify {
        Verify::Opportunistic { names } => ("opportunistic", names.clone()),
        Verify::Pkix { roots, names } => {
            assert!(roots.is_none(), "the action's roots");
            ("pkix", names.clone())
        }
        Verify::Dane { names, .. } => ("dane", names.clone()),
    };
    (
        p.policy,
        p.required,
        how,
        names,
        p.sni.clone(),
        p.sts_report,
    )
}

fn plan(security: Security, c: &Candidate, tls: RelayTls, sts: StsCheck) -> Option<Words> {
    tls_plan(&mx_route(security), c, tls, Some(config()), sts).map(|p| describe(&p))
}

#[test]
fn checks_by_mode_and_listing() {
    let enforce = policy(Mode::Enforce, &["mx1.example.org", "*.mx.example.org"]);
    let testing = policy(Mode::Testing, &["mx1.example.org"]);
    let none = policy(Mode::None, &[]);
    for (p, host, want) in [
        (None, "mx1.example.org", StsCheck::Nothing),
        (Some(&none), "mx1.example.org", StsCheck::Nothing),
        (Some(&enforce), "a.mx.example.org", StsCheck::Require),
        // Under enforce an unlisted exchanger is never tried (`sts_filter`).
        (Some(&enforce), "other.example", StsCheck::Require),
        (Some(&testing), "MX1.example.org.", StsCheck::Report),
        (Some(&testing), "mx2.example.org", StsCheck::Unlisted),
    ] {
        assert_eq!(sts_check(p, host), want, "{host}");
    }
}

#[test]
fn enforce_keeps_only_the_listed_exchangers_in_order() {
    let p = policy(Mode::Enforce, &["*.example.org"]);
    let list = vec![
        candidate("mx.elsewhere.net", 1),
        candidate("mx1.example.org", 2),
        dane("mx2.example.org", 3),
        candidate("deep.mx3.example.org", 4),
        candidate("mx1.example.org", 5),
    ];
    let kept = sts_filter("example.org", list.clone(), Some(&p)).unwrap_or_default();
    let addrs: Vec<IpAddr> = kept.iter().map(|c| c.addr).collect();
    assert_eq!(
        addrs,
        [2, 3, 5].map(|n| IpAddr::from([192, 0, 2, n])).to_vec(),
        "a wildcard is one label, DANE exchangers are filtered too"
    );
    // None listed: every recipient waits.
    let only = policy(Mode::Enforce, &["mx.example.com"]);
    assert_eq!(
        sts_filter("example.org", list.clone(), Some(&only)),
        Err(Outcome::TempFail(
            "451 4.7.5 MTA-STS: no exchanger of example.org matches its policy".into()
        ))
    );
    // Testing, none and no policy keep everything.
    for p in [
        Some(policy(Mode::Testing, &["mx.example.com"])),
        Some(policy(Mode::None, &[])),
        None,
    ] {
        assert_eq!(
            sts_filter("example.org", list.clone(), p.as_ref()),
            Ok(list.clone())
        );
    }
}

#[test]
fn enforce_requires_pkix_for_the_exchanger_unless_dane() {
    let c = candidate("mx1.example.org", 1);
    let host = vec!["mx1.example.org".to_string()];
    let sni = Some("mx1.example.org".to_string());
    // Over opportunistic delivery and over `tls no-verify` alike.
    for tls in [RelayTls::Default, RelayTls::NoVerify, RelayTls::Verify] {
        assert_eq!(
            plan(Security::Opportunistic, &c, tls, StsCheck::Require),
            Some(("mta-sts", true, "pkix", host.clone(), sni.clone(), false)),
            "{tls:?}"
        );
    }
    // DANE wins (RFC 8461 §2).
    let d = dane("mx2.example.org", 2);
    assert_eq!(
        plan(
            Security::Opportunistic,
            &d,
            RelayTls::Default,
            StsCheck::Require
        ),
        Some((
            "dane",
            true,
            "dane",
            vec!["mx2.example.org".into(), "example.org".into()],
            Some("mx2.example.org".into()),
            false
        ))
    );
    assert_eq!(
        plan(
            Security::Opportunistic,
            &d,
            RelayTls::Default,
            StsCheck::Report
        )
        .map(|p| p.5),
        Some(false),
        "DANE decides: nothing to report"
    );
}

#[test]
fn testing_reports_and_changes_nothing_else() {
    let c = candidate("mx1.example.org", 1);
    let host = vec!["mx1.example.org".to_string()];
    let sni = Some("mx1.example.org".to_string());
    // Only a listed exchanger's attempt is marked for the report.
    for (sts, report) in [
        (StsCheck::Report, true),
        (StsCheck::Nothing, false),
        (StsCheck::Unlisted, false),
    ] {
        let want = (
            "opportunistic",
            false,
            "opportunistic",
            host.clone(),
            sni.clone(),
            report,
        );
        assert_eq!(
            plan(Security::Opportunistic, &c, RelayTls::Default, sts),
            Some(want),
            "{sts:?}"
        );
    }
    assert_eq!(
        plan(Security::StartTls, &c, RelayTls::Verify, StsCheck::Report),
        Some(("pkix", true, "pkix", host.clone(), sni.clone(), true))
    );
    assert_eq!(
        plan(
            Security::StartTls,
            &c,
            RelayTls::NoVerify,
            StsCheck::Nothing
        ),
        Some(("encrypt", true, "opportunistic", host, sni, false))
    );
}

#[test]
fn plain_text_routes_and_actions_without_tls() {
    let c = candidate("mx1.example.org", 1);
    assert_eq!(
        plan(Security::Plain, &c, RelayTls::Default, StsCheck::Require),
        None
    );
    let mut lmtp = mx_route(Security::Opportunistic);
    lmtp.proto = Proto::Lmtp;
    assert!(tls_plan(
        &lmtp,
        &c,
        RelayTls::Default,
        Some(config()),
        StsCheck::Nothing
    )
    .is_none());
    let route = mx_route(Security::Opportunistic);
    assert!(tls_plan(&route, &c, RelayTls::Default, None, StsCheck::Nothing).is_none());
    // An address literal: no SNI, no name to check.
    let lit = candidate("192.0.2.7", 7);
    assert_eq!(
        plan(
            Security::Implicit,
            &lit,
            RelayTls::Default,
            StsCheck::Nothing
        ),
        Some(("encrypt", true, "opportunistic", Vec::new(), None, false))
    );
}
