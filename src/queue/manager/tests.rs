//! The queue manager driven as a dialog: events in, the actions it asks for checked,
//! their completions fed back. No spool, socket or clock.

use super::*;
use crate::mail::delivery::Dest;
use crate::mta::client::{JobDone, SuccessNotice};
use crate::queue::forward::NewDest;
use std::collections::HashMap as Map;
use std::path::Path;

const CONF: &str = r#"
    listen on 127.0.0.1 port 2525
    action "mb" maildir user nobody
    action "short" maildir user nobody ttl 1h
    action "l" lmtp "127.0.0.1:2424" rcpt-to
    action "out" relay host "smtp://127.0.0.1:2525" helo relay.example.org
    match from any for domain "example.org" action "mb"
"#;

const T0: u64 = 1_000_000;

struct Dialog {
    m: Manager,
    now: u64,
    /// Actions not looked at yet.
    pending: Vec<Effect>,
}

fn env(msgid: u32, n: u64, action: &str, dest: Dest) -> Envelope {
    Envelope {
        evpid: (u64::from(msgid) << 32) | n,
        ctime: T0,
        sender: "sender@example.net".into(),
        rcpt: match &dest {
            Dest::User(u) => format!("{u}@example.org"),
            Dest::Relay(a) => a.clone(),
            _ => "x@example.org".into(),
        },
        dest: dest.encode(),
        action: action.into(),
        ..Envelope::default()
    }
}

fn user(msgid: u32, n: u64, name: &str) -> Envelope {
    env(msgid, n, "mb", Dest::User(name.into()))
}

fn relay(msgid: u32, n: u64, addr: &str) -> Envelope {
    env(msgid, n, "out", Dest::Relay(addr.into()))
}

impl Dialog {
    fn new() -> Dialog {
        let cfg = crate::config::parse(CONF, Path::new("t"), &Map::new())
            .unwrap_or_else(|e| panic!("{e}"));
        Dialog {
            m: Manager::new(Arc::new(cfg), "daemon".into()),
            now: T0,
            pending: Vec::new(),
        }
    }

    fn take(&mut self) -> &mut Self {
        let a = self.m.take_actions();
        self.pending.extend(a);
        self
    }

    fn commit(&mut self, envs: &[Envelope]) -> &mut Self {
        self.m.committed(envs, self.now);
        self.take()
    }

    fn run(&mut self) -> &mut Self {
        self.m.run(self.now);
        self.take()
    }

    /// Takes the pending actions matching `f`, checking none else is pending but log
    /// lines; returns them.
    fn expect<T>(&mut self, what: &str, mut f: impl FnMut(&Effect) -> Option<T>) -> Vec<T> {
        let mut got = Vec::new();
        let mut rest = Vec::new();
        for a in self.pending.drain(..) {
            match f(&a) {
                Some(t) => got.push(t),
                None => rest.push(a),
            }
        }
        let unexpected: Vec<&Effect> = rest
            .iter()
            .filter(|a| !matches!(a, Effect::Log(..)))
            .collect();
        assert!(unexpected.is_empty(), "{what}: unexpected {unexpected:#?}");
        self.pending = rest;
        got
    }

    fn deliveries(&mut self) -> Vec<DeliverReq> {
        self.expect("deliveries", |a| match a {
            Effect::Deliver(Delivery { req, .. }) => Some(req.clone()),
            _ => None,
        })
    }

    /// The writes asked for: (id, evpids written, durable).
    fn writes(&mut self) -> Vec<(u64, Vec<u64>, bool)> {
        self.expect("writes", |a| match a {
            Effect::Write(EnvWrite {
                id, envs, durable, ..
            }) => Some((*id, envs.iter().map(|e| e.evpid).collect(), *durable)),
            _ => None,
        })
    }

    /// Writes, then completes them.
    fn written(&mut self) -> Vec<Vec<u64>> {
        let w = self.writes();
        for (id, _, _) in &w {
            self.m.written(*id, Ok(()), self.now);
        }
        self.take();
        w.into_iter().map(|(_, e, _)| e).collect()
    }

    /// The log lines so far (taken).
    fn logs(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.pending.retain(|a| match a {
            Effect::Log(_, l) => {
                out.push(l.clone());
                false
            }
            _ => true,
        });
        out
    }

    fn result(&mut self, id: u64, o: Outcome) -> &mut Self {
        self.m.local_result(id, o, self.now);
        self.take()
    }
}

#[test]
fn three_envelopes_committed_are_three_deliveries_and_one_removal_at_a_time() {
    let mut d = Dialog::new();
    let m = 0x0a00_0001;
    d.commit(&[user(m, 1, "alice"), user(m, 2, "bob"), user(m, 3, "carol")])
        .run();
    let reqs = d.deliveries();
    let users: Vec<&str> = reqs.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(users, ["nobody", "nobody", "nobody"]);
    assert_eq!(d.m.inflight(), 3);
    // The first result: its removal is written at once, the whole set that remains.
    d.result(reqs[0].id, Outcome::Ok);
    assert!(d.logs()[0].ends_with("dest=user:alice result=Ok"));
    let w = d.writes();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].1, [(u64::from(m) << 32) | 2, (u64::from(m) << 32) | 3]);
    // The others while it is in flight: one write once it is done, the message gone.
    d.result(reqs[1].id, Outcome::Ok)
        .result(reqs[2].id, Outcome::Ok);
    assert!(d.writes().is_empty());
    assert!(d.m.writing() && d.m.is_empty());
    d.m.written(w[0].0, Ok(()), d.now);
    d.take();
    assert_eq!(d.written(), [Vec::<u64>::new()]);
    assert!(!d.m.writing());
    assert_eq!(d.m.stats.delivered, 3);
}

#[test]
fn tempfail_is_written_and_retried_with_backoff() {
    let mut d = Dialog::new();
    let e = user(0x0b00_0001, 1, "alice");
    d.commit(std::slice::from_ref(&e)).run();
    let req = d.deliveries().remove(0);
    d.result(req.id, Outcome::TempFail("451 mailbox busy".into()));
    assert!(d.logs()[0].contains("result=TempFail retry-in=10s stat=\"451 mailbox busy\""));
    let w = d.writes();
    assert_eq!(w[0].1, [e.evpid]);
    let stored = d.m.envelope(e.evpid).cloned().unwrap_or_default();
    assert_eq!((stored.retry, stored.last_try), (1, T0));
    assert_eq!(stored.errorline, "451 mailbox busy");
    assert_eq!(d.m.listing()[0].1, "pending");
    // Due 10 s later, then 40 s after the second failure.
    d.now += 9;
    d.run();
    assert!(d.deliveries().is_empty());
    d.now += 1;
    d.run();
    let req = d.deliveries().remove(0);
    d.result(req.id, Outcome::TempFail("451 again".into()));
    assert!(d.logs()[0].contains("retry-in=40s"));
    // The second write waits for the first.
    assert!(d.writes().is_empty());
    d.m.written(w[0].0, Ok(()), d.now);
    d.take();
    assert_eq!(d.writes().len(), 1);
}

#[test]
fn expiry_bounces_and_removes() {
    let mut d = Dialog::new();
    let mut e = env(0x0c00_0001, 1, "short", Dest::User("alice".into()));
    e.ctime = T0 - 3600;
    d.commit(std::slice::from_ref(&e)).run();
    let req = d.deliveries().remove(0);
    d.result(req.id, Outcome::TempFail("451 busy".into()));
    assert!(d.logs()[0].contains("result=Expired stat=\"451 busy\""));
    let bounces = d.expect("bounce", |a| match a {
        Effect::Bounce(Notice {
            env, kind, hold, ..
        }) => {
            assert!(*hold);
            Some((env.errorline.clone(), *kind))
        }
        Effect::Write(EnvWrite { envs, .. }) if envs.is_empty() => {
            Some((String::new(), DsnKind::Failed))
        }
        _ => None,
    });
    // The notification first (it reads the message), then the removal.
    assert_eq!(bounces.len(), 2);
    assert!(bounces[0]
        .0
        .starts_with("554 5.4.7 expired after 1 attempts: 451 busy"));
    assert_eq!(bounces[1].0, "");
    assert_eq!(d.m.stats.expired, 1);
}

#[test]
fn permfail_bounces_only_when_wanted() {
    let mut d = Dialog::new();
    let mut null = user(0x0d00_0001, 1, "bob");
    null.sender.clear();
    let mut never = user(0x0d00_0002, 1, "carol");
    never.dsn_notify = crate::mail::params::notify::NEVER;
    let plain = user(0x0d00_0003, 1, "dave");
    d.commit(&[null, never, plain.clone()]).run();
    for req in d.deliveries() {
        d.result(req.id, Outcome::PermFail("550 no such user".into()));
    }
    let logs = d.logs();
    assert!(logs
        .iter()
        .any(|l| l.ends_with("bounce not sent: the sender is <>")));
    assert!(logs
        .iter()
        .any(|l| l.ends_with("bounce not sent: NOTIFY excludes it")));
    let b = d.expect("bounce", |a| match a {
        Effect::Bounce(Notice { env, .. }) => Some(env.evpid),
        Effect::Write(EnvWrite { envs, .. }) if envs.is_empty() => Some(0),
        _ => None,
    });
    assert_eq!(b.iter().filter(|&&e| e == plain.evpid).count(), 1);
    assert_eq!(b.iter().filter(|&&e| e == 0).count(), 3);
    // The notification queued: counted, logged, its envelopes scheduled.
    let n = user(0x0e00_0001, 1, "sender");
    d.m.bounced(
        plain.evpid,
        DsnKind::Failed,
        "sender@example.net",
        Ok((0x0e00_0001, vec![n.clone()])),
        d.now,
    );
    d.take();
    assert!(d.logs()[0].ends_with("bounce msgid=0e000001 kind=failed to=<sender@example.net>"));
    assert_eq!(d.m.stats.bounces, 1);
    assert!(d.m.envelope(n.evpid).is_some());
}

#[test]
fn forward_items_become_new_envelopes_in_one_durable_write() {
    let mut d = Dialog::new();
    let e = user(0x0f00_0001, 1, "alice");
    d.commit(std::slice::from_ref(&e)).run();
    let req = d.deliveries().remove(0);
    d.result(
        req.id,
        Outcome::Forward(vec!["bob".into(), "|/bin/true".into()]),
    );
    let asked = d.expect("expand", |a| match a {
        Effect::Expand(ForwardFile { owner, items, .. }) => Some((owner.clone(), items.len())),
        _ => None,
    });
    assert_eq!(asked, [("alice".to_string(), 2)]);
    assert_eq!(d.m.listing()[0].1, "inflight");
    let dests = vec![
        NewDest {
            dest: Dest::User("bob".into()),
            action: "mb".into(),
            user: String::new(),
            no_forward: false,
        },
        NewDest {
            dest: Dest::Pipe("/bin/true".into()),
            action: "mb".into(),
            user: "alice".into(),
            no_forward: false,
        },
    ];
    d.m.expanded(e.evpid, Ok(dests), d.now);
    d.take();
    assert!(d.logs()[0].ends_with("forward of alice to 2 destination(s)"));
    let w = d.writes();
    assert_eq!(w.len(), 1);
    let (id, written, durable) = &w[0];
    assert!(*durable && written.len() == 2 && !written.contains(&e.evpid));
    // Not delivered before the write is done.
    d.run();
    assert!(d.deliveries().is_empty());
    d.m.written(*id, Ok(()), d.now);
    d.take().run();
    let reqs = d.deliveries();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().any(
        |r| r.kind == crate::privsep::LocalKind::Pipe("/bin/true".into()) && r.user == "alice"
    ));
    // None at all: a permanent failure.
    let e2 = user(0x0f00_0002, 1, "carol");
    d.commit(std::slice::from_ref(&e2)).run();
    let req = d.deliveries().remove(0);
    d.result(req.id, Outcome::Forward(vec!["x".into()]));
    d.expect("expand", |a| matches!(a, Effect::Expand(_)).then_some(()));
    d.m.expanded(e2.evpid, Ok(Vec::new()), d.now);
    d.take();
    assert!(d.logs()[0]
        .contains("result=PermFail stat=\"the .forward of carol names no usable destination\""));
}

#[test]
fn a_forward_whose_lookup_failed_for_now_is_tried_again() {
    let mut d = Dialog::new();
    let e = user(0x0f00_0003, 1, "dave");
    d.commit(std::slice::from_ref(&e)).run();
    let req = d.deliveries().remove(0);
    d.result(req.id, Outcome::Forward(vec!["x@example.org".into()]));
    d.expect("expand", |a| matches!(a, Effect::Expand(_)).then_some(()));
    // A table process could not answer for an address of the file.
    d.m.expanded(e.evpid, Err("table virtuals: no answer".into()), d.now);
    d.take();
    let logs = d.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("result=TempFail") && l.contains("table virtuals: no answer")),
        "{logs:?}"
    );
    // Kept for its next try.
    assert_eq!(d.m.listing()[0].1, "pending");
}

/// A job given to a session: (session, job, msgid, recipients).
type Sent = (u64, u64, u32, Vec<String>);

/// Job `id` over with these outcomes, on a session whose server took NOTIFY.
fn done(id: u64, outcomes: Vec<Outcome>, notice: SuccessNotice) -> JobDone {
    let n = outcomes.len();
    JobDone {
        id,
        outcomes,
        replies: vec!["250 2.0.0 Ok: queued".into(); n],
        notice,
        server: "mx.relay.test".into(),
    }
}

/// The sessions started and the jobs given.
fn sends(d: &mut Dialog) -> (Vec<u64>, Vec<Sent>) {
    let mut connects = Vec::new();
    let sends = d.expect("sessions", |a| match a {
        Effect::Connect { session, route } => {
            if route.action == "out" {
                assert_eq!(route.helo, "relay.example.org");
            }
            connects.push(*session);
            Some(None)
        }
        Effect::Send {
            session,
            msgid,
            job,
        } => Some(Some((
            *session,
            job.id,
            *msgid,
            job.rcpts.iter().map(|r| r.addr.clone()).collect(),
        ))),
        _ => None,
    });
    (connects, sends.into_iter().flatten().collect())
}

#[test]
fn a_message_and_route_make_one_job_and_messages_share_the_session() {
    let mut d = Dialog::new();
    let (m1, m2) = (0x1000_0001, 0x1000_0002);
    let rcpts: Vec<Envelope> = (1..=5)
        .map(|i| relay(m1, i, &format!("r{i}@relay.test")))
        .collect();
    d.commit(&rcpts)
        .commit(&[relay(m2, 1, "s@relay.test")])
        .run();
    let (connects, jobs) = sends(&mut d);
    assert_eq!(connects.len(), 1);
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.0 == connects[0]));
    assert_eq!(jobs[0].2, m1);
    assert_eq!(jobs[0].3.len(), 5);
    assert_eq!(jobs[1].3, ["s@relay.test"]);
    // One recipient refused: only it bounces.
    let mut o = vec![Outcome::Ok; 5];
    o[2] = Outcome::PermFail("550 5.1.1 no such user".into());
    d.m.job_done(done(jobs[0].1, o, SuccessNotice::PassedOn), d.now);
    d.take();
    let b = d.expect("bounce", |a| match a {
        Effect::Bounce(Notice { env, .. }) => Some(env.rcpt.clone()),
        Effect::Write(_) => Some(String::new()),
        _ => None,
    });
    assert_eq!(b, ["r3@relay.test", ""]);
    assert_eq!(d.m.stats.delivered, 4);
    // The last job over: the session is told to quit.
    d.m.job_done(
        done(jobs[1].1, vec![Outcome::Ok], SuccessNotice::PassedOn),
        d.now,
    );
    d.take();
    let quit = d.expect("quit", |a| match a {
        Effect::Quit { session } => Some(*session),
        Effect::Write(_) => Some(0),
        _ => None,
    });
    assert!(quit.contains(&connects[0]));
    d.m.session_closed(connects[0], Vec::new(), "done", true, d.now);
    assert_eq!(d.m.sessions(), 0);
}

#[test]
fn recipients_beyond_the_bound_make_a_second_job() {
    let mut d = Dialog::new();
    let m = 0x1100_0001;
    let rcpts: Vec<Envelope> = (1..=150)
        .map(|i| relay(m, i, &format!("r{i}@relay.test")))
        .collect();
    d.commit(&rcpts).run();
    let (connects, jobs) = sends(&mut d);
    assert_eq!(connects.len(), 1);
    let sizes: Vec<usize> = jobs.iter().map(|j| j.3.len()).collect();
    assert_eq!(sizes, [100, 50]);
}

#[test]
fn a_lost_session_defers_its_jobs_and_lmtp_is_mda() {
    let mut d = Dialog::new();
    let e = env(0x1200_0001, 1, "l", Dest::User("bob".into()));
    d.m.paused_mda = true;
    d.commit(std::slice::from_ref(&e)).run();
    let (connects, _) = sends(&mut d);
    assert!(connects.is_empty(), "LMTP waits while mda is paused");
    d.m.paused_mda = false;
    d.run();
    let (connects, jobs) = sends(&mut d);
    assert_eq!(jobs[0].3, ["bob@example.org"]);
    d.m.session_closed(
        connects[0],
        Vec::new(),
        "cannot connect: refused",
        false,
        d.now,
    );
    d.take();
    assert!(d.logs()[0].contains("result=TempFail retry-in=10s stat=\"cannot connect: refused\""));
    assert_eq!(d.writes().len(), 1);
}

#[test]
fn control_remove_schedule_and_pause() {
    let mut d = Dialog::new();
    let mut held = user(0x1300_0001, 1, "alice");
    held.held = true;
    held.errorline = "held by a filter".into();
    let queued = relay(0x1300_0002, 1, "x@relay.test");
    d.m.paused_mta = true;
    d.commit(&[held.clone(), queued.clone()]).run();
    assert!(d.logs()[0].ends_with("held in the queue: held by a filter"));
    assert!(d.deliveries().is_empty());
    let states: Vec<&str> = d.m.listing().iter().map(|(_, s)| *s).collect();
    assert_eq!(states, ["held", "pending"]);
    // Scheduled by hand: released for good (written) and delivered.
    assert_eq!(d.m.schedule(&[held.evpid], d.now), 1);
    d.take();
    assert_eq!(d.writes().len(), 1);
    d.run();
    let req = d.deliveries().remove(0);
    // In flight: not removed by hand; the queued one is.
    assert_eq!(d.m.remove_by_hand(&[held.evpid, queued.evpid]), 1);
    d.take();
    assert_eq!(d.writes()[0].1, Vec::<u64>::new());
    assert_eq!(d.m.stats.removed, 1);
    assert_eq!(d.m.ids(), [held.evpid]);
    d.result(req.id, Outcome::Ok);
    assert!(d.m.is_empty());
}

#[test]
fn handing_over_fails_temporarily() {
    let mut d = Dialog::new();
    let e = user(0x1400_0001, 1, "alice");
    d.commit(std::slice::from_ref(&e)).run();
    let req = d.deliveries().remove(0);
    d.m.handed(req.id, Err("no delivery process".into()), d.now);
    d.take();
    assert!(d.logs()[0].contains("result=TempFail retry-in=10s stat=\"no delivery process\""));
    // A late result for it is ignored.
    d.result(req.id, Outcome::Ok);
    assert_eq!(d.m.stats.delivered, 0);
}

#[test]
fn jobs_carry_the_dsn_and_body_parameters() {
    let mut d = Dialog::new();
    let m = 0x1500_0001;
    let mut a = relay(m, 1, "a@relay.test");
    a.body_8bit = true;
    a.dsn_ret = "HDRS".into();
    a.dsn_envid = "id1".into();
    a.dsn_notify = notify::SUCCESS;
    a.dsn_orcpt = "rfc822;A@relay.test".into();
    a.rcpt = "A@relay.test".into();
    d.commit(&[a]).run();
    let job = d
        .expect("send", |e| match e {
            Effect::Send { job, .. } => Some(Some(job.clone())),
            Effect::Connect { .. } => Some(None),
            _ => None,
        })
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_default();
    assert_eq!(
        (
            job.msgid,
            job.body_8bit,
            job.ret.as_str(),
            job.envid.as_str()
        ),
        (m, true, "HDRS", "id1")
    );
    assert_eq!(
        job.rcpts,
        [Rcpt {
            addr: "a@relay.test".into(),
            notify: notify::SUCCESS,
            orcpt: "rfc822;A@relay.test".into(),
            original: "A@relay.test".into(),
        }]
    );
}

/// Notices asked for by the effects: (kind, recipients, remote).
fn notices(d: &mut Dialog) -> Vec<(DsnKind, Vec<String>, String)> {
    d.expect("notices", |e| match e {
        Effect::Bounce(n) => Some(Some((
            n.kind,
            std::iter::once(&n.env)
                .chain(&n.more)
                .map(|e| format!("{} {}", e.rcpt, e.errorline))
                .collect(),
            n.remote_mta.clone(),
        ))),
        Effect::Write(_) | Effect::Quit { .. } => Some(None),
        _ => None,
    })
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn a_server_without_dsn_gives_one_relayed_notice_per_job() {
    let mut d = Dialog::new();
    let m = 0x1600_0001;
    let rcpts: Vec<Envelope> = (1..=4)
        .map(|i| {
            let mut e = relay(m, i, &format!("r{i}@relay.test"));
            e.dsn_notify = match i {
                1 | 3 => notify::SUCCESS | notify::FAILURE,
                2 => notify::FAILURE,
                _ => 0,
            };
            e
        })
        .collect();
    d.commit(&rcpts).run();
    let (_, jobs) = sends(&mut d);
    let mut o = vec![Outcome::Ok; 4];
    o[2] = Outcome::PermFail("550 5.1.1 no".into());
    let mut r = done(jobs[0].1, o, SuccessNotice::Relayed);
    r.replies[0] = "250 2.0.0 Ok: queued as 7".into();
    d.m.job_done(r, d.now);
    d.take();
    let n = notices(&mut d);
    // One failure notice for r3, one relayed notice listing r1 only (r3 failed).
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(n[0].0, DsnKind::Failed);
    assert_eq!(
        n[1],
        (
            DsnKind::Relayed,
            vec!["r1@relay.test 250 2.0.0 Ok: queued as 7".to_string()],
            "mx.relay.test".to_string()
        )
    );
    assert_eq!(d.m.stats.delivered, 3);
}

#[test]
fn success_notices_by_what_the_session_says() {
    for (notice, want) in [
        (SuccessNotice::PassedOn, vec![]),
        (SuccessNotice::Delivered, vec![DsnKind::Delivered; 2]),
        (SuccessNotice::Relayed, vec![DsnKind::Relayed]),
    ] {
        let mut d = Dialog::new();
        let m = 0x1700_0001;
        let rcpts: Vec<Envelope> = (1..=2)
            .map(|i| {
                let mut e = relay(m, i, &format!("r{i}@relay.test"));
                e.dsn_notify = notify::SUCCESS;
                e
            })
            .collect();
        d.commit(&rcpts).run();
        let (_, jobs) = sends(&mut d);
        d.m.job_done(done(jobs[0].1, vec![Outcome::Ok; 2], notice), d.now);
        d.take();
        let kinds: Vec<DsnKind> = notices(&mut d).into_iter().map(|n| n.0).collect();
        assert_eq!(kinds, want, "{notice:?}");
    }
}
