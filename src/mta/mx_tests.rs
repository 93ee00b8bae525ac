use super::*;
use crate::dns::Answer as ResolvedAnswer;

fn q(name: &str, qtype: Qtype) -> Question {
    Question {
        name: name.into(),
        qtype,
    }
}

fn ok(name: &str, records: Vec<Rdata>, secure: bool) -> DnsResult {
    Ok(ResolvedAnswer {
        name: name.into(),
        records,
        secure,
        ttl: 300,
    })
}

fn mx(records: &[(u16, &str)]) -> DnsResult {
    ok(
        "example.org",
        records
            .iter()
            .map(|(p, h)| Rdata::Mx(*p, h.to_string()))
            .collect(),
        false,
    )
}

fn addr(name: &str, ips: &[&str]) -> DnsResult {
    ok(
        name,
        ips.iter()
            .filter_map(|i| i.parse().ok())
            .map(Rdata::Addr)
            .collect(),
        false,
    )
}

fn settings() -> Settings {
    Settings {
        port: 25,
        dane: true,
        my_names: vec!["me.example.net".into()],
        my_addrs: vec!["192.0.2.99".parse().unwrap_or(IpAddr::from([0; 4]))],
        backup: None,
    }
}

/// Answers every address question of `r` from `table` (name -> addresses; NXDOMAIN
/// for names not in it) until it is done.
fn finish(r: &mut RouteResolver, mut asked: Vec<Question>, table: &[(&str, &[&str])]) -> Progress {
    let mut last = Progress::Wait;
    for _ in 0..100 {
        let Some(question) = asked.pop() else {
            return last;
        };
        let answer = match table.iter().find(|(n, _)| *n == question.name) {
            Some((n, ips)) => {
                let ips: Vec<&str> = ips
                    .iter()
                    .copied()
                    .filter(|i| i.contains(':') == (question.qtype == Qtype::Aaaa))
                    .collect();
                addr(n, &ips)
            }
            None => Err(DnsError::NxDomain { secure: false }),
        };
        match r.answer(&question, answer) {
            Progress::Ask(more) => asked.extend(more),
            p => last = p,
        }
    }
    last
}

fn hosts(p: &Progress) -> Vec<String> {
    match p {
        Progress::Done(Ok(c)) => c.iter().map(|c| format!("{} {}", c.host, c.addr)).collect(),
        other => vec![format!("{other:?}")],
    }
}

fn start_mx(records: &[(u16, &str)], seed: u64) -> (RouteResolver, Progress) {
    let (mut r, p) = RouteResolver::mx("Example.ORG", settings(), seed);
    assert_eq!(p, Progress::Ask(vec![q("example.org", Qtype::Mx)]));
    let p = r.answer(&q("example.org", Qtype::Mx), mx(records));
    (r, p)
}

#[test]
fn exchangers_by_preference_and_their_addresses() {
    let (mut r, p) = start_mx(&[(20, "mx2.example.org."), (10, "MX1.example.org")], 7);
    let Progress::Ask(asked) = p else {
        panic!("{p:?}")
    };
    assert_eq!(asked.len(), 4, "{asked:?}");
    let p = finish(
        &mut r,
        asked,
        &[
            ("mx1.example.org", &["192.0.2.1", "2001:db8::1"]),
            ("mx2.example.org", &["192.0.2.2"]),
        ],
    );
    assert_eq!(
        hosts(&p),
        [
            "mx1.example.org 2001:db8::1",
            "mx1.example.org 192.0.2.1",
            "mx2.example.org 192.0.2.2"
        ]
    );
}

#[test]
fn equal_preferences_are_shuffled() {
    let mut firsts = std::collections::HashSet::new();
    for seed in 0..64u64 {
        let o = order(
            vec![
                (10, "a".into()),
                (10, "b".into()),
                (10, "c".into()),
                (5, "z".into()),
            ],
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        assert_eq!(o[0].1, "z");
        assert_eq!(o.len(), 4);
        firsts.insert(o[1].1.clone());
    }
    assert_eq!(
        firsts.len(),
        3,
        "every host of preference 10 comes first sometimes"
    );
    // A host listed twice is tried once, at its best preference.
    let o = order(
        vec![(30, "a".into()), (10, "a".into()), (20, "b".into())],
        1,
    );
    assert_eq!(o, [(10, "a".to_string()), (20, "b".to_string())]);
}

#[test]
fn no_mx_means_the_domain_itself() {
    let (mut r, p) = start_mx(&[], 1);
    let Progress::Ask(asked) = p else {
        panic!("{p:?}")
    };
    assert!(asked.contains(&q("example.org", Qtype::A)));
    let p = finish(&mut r, asked, &[("example.org", &["192.0.2.7"])]);
    assert_eq!(hosts(&p), ["example.org 192.0.2.7"]);
}

#[test]
fn dns_failures_become_outcomes() {
    let cases: Vec<(DnsResult, &str)> = vec![
        (mx(&[(0, "")]), "556 5.1.10"),
        (Err(DnsError::NxDomain { secure: false }), "550 5.1.2"),
        (Err(DnsError::TempFail("SERVFAIL".into())), "451 4.4.3"),
        (Err(DnsError::PermFail("bad label".into())), "550 5.1.2"),
    ];
    for (answer, code) in cases {
        let (mut r, _) = RouteResolver::mx("example.org", settings(), 1);
        let p = r.answer(&q("example.org", Qtype::Mx), answer.clone());
        let text = match &p {
            Progress::Done(Err(Outcome::PermFail(t) | Outcome::TempFail(t))) => t.clone(),
            other => panic!("{answer:?}: {other:?}"),
        };
        assert!(text.starts_with(code), "{text}");
        assert_eq!(
            matches!(p, Progress::Done(Err(Outcome::TempFail(_)))),
            code.starts_with('4')
        );
    }
    // A null MX among real exchangers is ignored.
    let (mut r, p) = start_mx(&[(0, ""), (10, "mx.example.org")], 1);
    let Progress::Ask(asked) = p else {
        panic!("{p:?}")
    };
    let p = finish(&mut r, asked, &[("mx.example.org", &["192.0.2.1"])]);
    assert_eq!(hosts(&p), ["mx.example.org 192.0.2.1"]);
}

#[test]
fn an_exchanger_that_is_this_host_ends_the_list() {
    // By name: only the exchangers preferred to this host are tried.
    let (mut r, p) = start_mx(
        &[
            (10, "mx.example.org"),
            (20, "me.example.net"),
            (30, "mx3.example.org"),
        ],
        1,
    );
    let Progress::Ask(asked) = p else {
        panic!("{p:?}")
    };
    let p = finish(
        &mut r,
        asked,
        &[
            ("mx.example.org", &["192.0.2.1"]),
            ("mx3.example.org", &["192.0.2.3"]),
        ],
    );
    assert_eq!(hosts(&p), ["mx.example.org 192.0.2.1"]);
    // The best exchanger is this host: a loop.
    let (_, p) = start_mx(&[(10, "me.example.net"), (20, "mx.example.org")], 1);
    assert!(
        matches!(&p, Progress::Done(Err(Outcome::PermFail(t))) if t.starts_with("554 5.4.6")),
        "{p:?}"
    );
    // By address: another name for one of this host's addresses.
    let (mut r, p) = start_mx(&[(10, "alias.example.org"), (20, "mx.example.org")], 1);
    let Progress::Ask(asked) = p else {
        panic!("{p:?}")
    };
    let p = finish(
        &mut r,
        asked,
        &[
            ("alias.example.org", &["192.0.2.99"]),
            ("mx.example.org", &["192.0.2.1"]),
        ],
    );
    assert!(
        matches!(&p, Progress::Done(Err(Outcome::PermFail(t))) if t.starts_with("554 5.4.6")),
        "{p:?}"
    );
    // A backup MX tries only the exchangers preferred to its own name.
    let mut s = settings();
    s.backup = Some("backup.example.org".into());
    let (mut r, _) = RouteResolver::mx("example.org", s, 1);
    let p = r.answer(
        &q("example.org", Qtype::Mx),
        mx(&[(10, "mx.example.org"), (20, "backup.example.org")]),
    );
    let Progress::Ask(asked) = p else {
        panic!("{p:?}")
    };
    assert!(
        asked.iter().all(|q| q.name == "mx.example.org"),
        "{asked:?}"
    );
}

#[test]
fn no_address_anywhere() {
    let (mut r, p) = start_mx(&[(10, "gone.example.org")], 1);
    let Progress::Ask(asked) = p else {
        panic!("{p:?}")
    };
    let p = finish(&mut r, asked, &[]);
    assert!(
        matches!(&p, Progress::Done(Err(Outcome::PermFail(t))) if t.starts_with("550 5.4.4")),
        "{p:?}"
    );
    // A temporary failure for one family makes it temporary.
    let (mut r, _) = start_mx(&[(10, "mx.example.org")], 1);
    let _ = r.answer(
        &q("mx.example.org", Qtype::Aaaa),
        Err(DnsError::TempFail("timeout".into())),
    );
    let p = r.answer(
        &q("mx.example.org", Qtype::A),
        Err(DnsError::NxDomain { secure: false }),
    );
    assert!(
        matches!(&p, Progress::Done(Err(Outcome::TempFail(t))) if t.starts_with("451 4.4.3")),
        "{p:?}"
    );
}

#[test]
fn dane_needs_authenticated_answers_all_the_way() {
    let tlsa = Rdata::Tlsa {
        usage: 3,
        selector: 1,
        mtype: 1,
        data: vec![0xab; 32],
    };
    let secure_mx = ok(
        "example.org",
        vec![Rdata::Mx(10, "mx.example.org".into())],
        true,
    );
    let a = |secure| {
        ok(
            "mx.example.org",
            vec![Rdata::Addr(IpAddr::from([192, 0, 2, 1]))],
            secure,
        )
    };
    let tq = q("_25._tcp.mx.example.org", Qtype::Tlsa);
    let run = |mx_answer: DnsResult, a_secure: bool, tlsa_answer: Option<DnsResult>| {
        let (mut r, _) = RouteResolver::mx("example.org", settings(), 1);
        let _ = r.answer(&q("example.org", Qtype::Mx), mx_answer);
        let _ = r.answer(
            &q("mx.example.org", Qtype::Aaaa),
            ok("mx.example.org", vec![], a_secure),
        );
        let p = r.answer(&q("mx.example.org", Qtype::A), a(a_secure));
        match tlsa_answer {
            None => p,
            Some(t) => {
                assert_eq!(p, Progress::Ask(vec![tq.clone()]));
                r.answer(&tq, t)
            }
        }
    };
    // Authenticated all the way: the records pin the host.
    let p = run(
        secure_mx.clone(),
        true,
        Some(ok(&tq.name, vec![tlsa.clone()], true)),
    );
    let Progress::Done(Ok(c)) = &p else {
        panic!("{p:?}")
    };
    assert!(
        matches!(&c[0].dane, Dane::Tlsa { base, records } if base == "mx.example.org" && records.len() == 1)
    );
    // An unauthenticated TLSA answer is ignored.
    let p = run(
        secure_mx.clone(),
        true,
        Some(ok(&tq.name, vec![tlsa.clone()], false)),
    );
    assert!(
        matches!(&p, Progress::Done(Ok(c)) if c[0].dane == Dane::None),
        "{p:?}"
    );
    // An unauthenticated MX or address: no TLSA question at all.
    let p = run(mx(&[(10, "mx.example.org")]), true, None);
    assert!(
        matches!(&p, Progress::Done(Ok(c)) if c[0].dane == Dane::None),
        "{p:?}"
    );
    let p = run(secure_mx.clone(), false, None);
    assert!(
        matches!(&p, Progress::Done(Ok(c)) if c[0].dane == Dane::None),
        "{p:?}"
    );
    // A failed TLSA lookup never downgrades: the host is not tried.
    let p = run(
        secure_mx,
        true,
        Some(Err(DnsError::TempFail("SERVFAIL".into()))),
    );
    assert!(
        matches!(&p, Progress::Done(Err(Outcome::TempFail(t))) if t.contains("TLSA")),
        "{p:?}"
    );
}

#[test]
fn stray_answers_and_unusable_addresses() {
    let (mut r, p) = start_mx(&[(10, "relay.example.net")], 1);
    assert_eq!(
        p,
        Progress::Ask(vec![
            q("relay.example.net", Qtype::Aaaa),
            q("relay.example.net", Qtype::A)
        ])
    );
    // An answer to a question not asked changes nothing.
    assert_eq!(
        r.answer(
            &q("other.example", Qtype::A),
            addr("other.example", &["192.0.2.5"])
        ),
        Progress::Wait
    );
    assert_eq!(
        r.answer(
            &q("relay.example.net", Qtype::Aaaa),
            addr("relay.example.net", &[])
        ),
        Progress::Wait
    );
    let p = r.answer(
        &q("relay.example.net", Qtype::A),
        addr("relay.example.net", &["192.0.2.8", "0.0.0.0", "224.0.0.1"]),
    );
    assert_eq!(hosts(&p), ["relay.example.net 192.0.2.8"]);
}
