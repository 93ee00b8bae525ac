//! Tests of `mta.rs` and `health.rs`: jobs on sessions, limits, route health.

use super::*;
use crate::nexthop::Proto;

fn route(port: u16) -> Route {
    Route {
        action: "out".into(),
        target: Target::Tcp("127.0.0.1".into(), port),
        proto: Proto::Smtp,
        helo: "me.example".into(),
        security: crate::nexthop::Security::Plain,
        label: None,
    }
}

fn head(msgid: u32) -> Job {
    Job {
        msgid,
        ..Job::default()
    }
}

fn rcpt(addr: &str) -> Rcpt {
    Rcpt {
        addr: addr.into(),
        ..Rcpt::default()
    }
}

fn connects(out: &[Effect]) -> Vec<u64> {
    out.iter()
        .filter_map(|a| match a {
            Effect::Connect { session, .. } => Some(*session),
            _ => None,
        })
        .collect()
}

fn sends(out: &[Effect]) -> Vec<(u64, u64)> {
    out.iter()
        .filter_map(|a| match a {
            Effect::Send { session, job, .. } => Some((*session, job.id)),
            _ => None,
        })
        .collect()
}

fn add_one(s: &mut Sessions, r: &Route, m: u32, id: &mut u64, out: &mut Vec<Effect>) {
    s.add(
        r,
        &head(m),
        vec![(u64::from(m) << 32, rcpt("a@b"))],
        id,
        out,
    );
}

/// A route that delivered once: its first job answered by the server.
fn proven(s: &mut Sessions, r: &Route, id: &mut u64) {
    let mut out = Vec::new();
    add_one(s, r, 9999, id, &mut out);
    let (_, job) = sends(&out)[0];
    assert!(s.done(job, true, id, &mut out).is_some());
}

#[test]
fn a_busy_route_opens_more_sessions_up_to_its_bound() {
    let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
    let max = MtaLimits::default().max_conn_per_route;
    // A new route: one session, whatever waits (slow start).
    for m in 0..30 {
        add_one(&mut s, &route(25), m, &mut id, &mut out);
    }
    assert_eq!(connects(&out).len(), 1);
    proven(&mut s, &route(25), &mut id);
    out.clear();
    for m in 0..(QUEUE_PER_SESSION * max + 5) as u32 {
        add_one(&mut s, &route(25), 100 + m, &mut id, &mut out);
    }
    assert_eq!(connects(&out).len(), max - 1);
    // Beyond, jobs go to the least busy session rather than wait.
    assert_eq!(sends(&out).len(), QUEUE_PER_SESSION * max + 5);
    assert!(s.backlog.is_empty());
}

#[test]
fn jobs_wait_for_a_session_and_an_ending_one_takes_none() {
    let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
    for p in 0..MAX_SESSIONS as u16 {
        s.add(
            &route(1000 + p),
            &head(1),
            vec![(1, rcpt("a@b"))],
            &mut id,
            &mut out,
        );
    }
    assert_eq!(s.len(), MAX_SESSIONS);
    out.clear();
    // No room for a session of a new route: the job waits.
    s.add(
        &route(25),
        &head(2),
        vec![(2 << 32, rcpt("a@b"))],
        &mut id,
        &mut out,
    );
    assert!(out.is_empty());
    // A session ends: the waiting job gets a new one.
    let first = session_of(&s, 1000);
    s.closing(first);
    assert_eq!(s.closed(first, "done", 0, &mut id, &mut out).len(), 1);
    assert_eq!(connects(&out).len(), 1);
    assert_eq!(sends(&out).len(), 1);
}

fn session_of(s: &Sessions, port: u16) -> u64 {
    s.sessions
        .iter()
        .find(|(_, x)| x.route == route(port))
        .map(|(&k, _)| k)
        .unwrap_or_default()
}

#[test]
fn a_session_is_told_to_quit_when_its_route_has_nothing_left() {
    let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
    s.add(
        &route(25),
        &head(1),
        vec![(1, rcpt("a@b"))],
        &mut id,
        &mut out,
    );
    s.add(
        &route(25),
        &head(2),
        vec![(2, rcpt("c@d"))],
        &mut id,
        &mut out,
    );
    let jobs = sends(&out);
    assert_eq!(connects(&out).len(), 1);
    out.clear();
    assert!(s.done(jobs[0].1, true, &mut id, &mut out).is_some());
    assert!(out.is_empty());
    assert!(s.done(jobs[1].1, true, &mut id, &mut out).is_some());
    assert!(matches!(out[..], [Effect::Quit { session }] if session == jobs[0].0));
    assert_eq!(s.envelopes(), 0);
}

#[test]
fn limits_per_domain() {
    let mut cfg = MtaConfig::default();
    let mut l = cfg.limits;
    l.max_conn_per_route = 2;
    l.session_mail_max = 3;
    cfg.domains.push(("example.org".into(), l));
    let mut s = Sessions::new(cfg);
    let mx = Route {
        target: Target::Mx("example.org".into()),
        ..route(25)
    };
    assert_eq!(s.limits(&mx).max_conn_per_route, 2);
    assert_eq!(s.limits(&route(25)).max_conn_per_route, 10);
    let (mut id, mut out) = (1, Vec::new());
    proven(&mut s, &mx, &mut id);
    for m in 0..40u32 {
        add_one(&mut s, &mx, m, &mut id, &mut out);
    }
    assert_eq!(connects(&out).len(), 1, "one more next to the first");
    // A session takes at most session-mail-max jobs.
    let per: Vec<usize> = s.sessions.values().map(|x| x.given).collect();
    assert!(per.iter().all(|&g| g <= 3), "{per:?}");
}

#[test]
fn a_failing_route_is_suspended_and_its_deferred_mail_comes_back() {
    let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
    add_one(&mut s, &route(25), 1, &mut id, &mut out);
    let (k, job) = sends(&out)[0];
    // The connection failed: the client settles the job without a verdict.
    let (rec, retry) = s
        .done(job, false, &mut id, &mut out)
        .unwrap_or_else(|| panic!());
    assert!(retry.is_empty());
    s.deferred(&rec.route, rec.evpids[0]);
    s.closing(k);
    assert!(s.closed(k, "refused", 1000, &mut id, &mut out).is_empty());
    let why = s.closed_route(&route(25), 1000).unwrap_or_default();
    assert!(why.contains("15s") && why.contains("refused"), "{why}");
    assert!(s.closed_route(&route(25), 1015).is_none());
    assert!(
        s.closed_route(&route(26), 1000).is_none(),
        "other routes go on"
    );
    // A second failure in a row: 60 s.
    out.clear();
    add_one(&mut s, &route(25), 2, &mut id, &mut out);
    let (k, job) = sends(&out)[0];
    let _ = s.done(job, false, &mut id, &mut out);
    s.deferred(&route(25), 2 << 32);
    s.closing(k);
    let _ = s.closed(k, "timeout", 2000, &mut id, &mut out);
    assert!(s.closed_route(&route(25), 2059).is_some());
    assert_eq!(s.routes()[0].failures, 2);
    // The route delivers again: what it deferred is returned, once.
    out.clear();
    add_one(&mut s, &route(25), 3, &mut id, &mut out);
    let (_, job) = sends(&out)[0];
    let (_, retry) = s
        .done(job, true, &mut id, &mut out)
        .unwrap_or_else(|| panic!());
    assert_eq!(retry, [1 << 32, 2 << 32]);
    assert_eq!(s.routes()[0].failures, 0);
    // Bounded by max-deferred.
    let mut s = Sessions::new(MtaConfig {
        max_deferred: 2,
        ..MtaConfig::default()
    });
    for e in 0..5 {
        s.deferred(&route(25), e);
    }
    assert_eq!(s.reopen("127.0.0.1"), [0, 1]);
}
