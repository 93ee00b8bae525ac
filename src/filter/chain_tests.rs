//! The chain machine driven as dialogs: queries in, steps out, decisions back.

use super::*;
use std::path::Path;

/// A configuration with filter processes `a` (0), `b` (1), `c` (2) and built-in ones.
fn cfg() -> Config {
    let text = r#"
filter a proc-exec "/bin/true"
filter b proc-exec "/bin/true"
filter c proc-exec "/bin/true"
filter nohelo phase helo match helo "bad.example" reject "550 5.7.1 bad helo"
filter spam phase mail-from match mail-from "spam@example.test" disconnect "421 4.7.0 go"
filter mark phase mail-from match mail-from "@junk.test" junk
filter skip phase mail-from match mail-from "@trusted.test" bypass
listen on 127.0.0.1 port 2525
"#;
    match crate::config::parse(text, Path::new("test.conf"), &HashMap::new()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn id(cfg: &Config, name: &str) -> FilterId {
    cfg.filters
        .iter()
        .position(|f| f.name == name)
        .unwrap_or_else(|| panic!("no filter {name}"))
}

/// A session with a chain, the states of the filter processes, and the steps seen.
struct Dialog {
    cfg: Config,
    chains: Chains,
    states: HashMap<FilterId, ProcState>,
    chain: Vec<FilterId>,
    steps: Vec<Step>,
}

const SID: u64 = 0x5e55;
const ALL: u32 = event::ANSWERED | event::DATA_LINES;

impl Dialog {
    fn new(chain: &[&str]) -> Dialog {
        let cfg = cfg();
        let chain = chain.iter().map(|n| id(&cfg, n)).collect();
        let states = (0..3)
            .map(|f| (f, ProcState::Ready { hooks: ALL }))
            .collect();
        Dialog {
            cfg,
            chains: Chains::new(),
            states,
            chain,
            steps: Vec::new(),
        }
    }

    fn state(&mut self, name: &str, s: ProcState) -> &mut Self {
        let f = id(&self.cfg, name);
        self.states.insert(f, s);
        self
    }

    fn query(&mut self, phase: Phase, param: &str) -> &mut Self {
        let q = FilterQuery {
            phase,
            param: param.into(),
        };
        let facts = Facts {
            addr: "192.0.2.7".parse().ok(),
            local: "127.0.0.1:25".into(),
            remote: "192.0.2.7:4321".into(),
            helo: "client.example".into(),
            ..Facts::default()
        };
        let states = self.states.clone();
        let state = move |f: FilterId| states.get(&f).copied().unwrap_or(ProcState::Down);
        let chain = self.chain.clone();
        let view = View {
            cfg: &self.cfg,
            state: &state,
        };
        self.chains
            .start(SID, chain, q, facts, &view, &mut self.steps);
        self
    }

    fn decide(&mut self, name: &str, d: Decision) -> &mut Self {
        let f = id(&self.cfg, name);
        let states = self.states.clone();
        let state = move |f: FilterId| states.get(&f).copied().unwrap_or(ProcState::Down);
        let view = View {
            cfg: &self.cfg,
            state: &state,
        };
        self.chains.on_decision(f, SID, d, &view, &mut self.steps);
        self
    }

    fn edit(&mut self, name: &str, e: Edit) -> &mut Self {
        let f = id(&self.cfg, name);
        self.chains.on_edit(f, SID, e, &mut self.steps);
        self
    }

    /// The one step taken since the last look.
    fn step(&mut self) -> Step {
        assert_eq!(self.steps.len(), 1, "steps: {:?}", self.steps);
        self.steps.remove(0)
    }

    fn expect_ask(&mut self, name: &str, event: Event) -> &mut Self {
        let fid = id(&self.cfg, name);
        assert_eq!(
            self.step(),
            Step::Ask {
                fid,
                sid: SID,
                event
            }
        );
        self
    }

    fn expect_verdict(&mut self, want: FilterVerdict) -> (Vec<Edit>, Vec<FilterId>) {
        match self.step() {
            Step::Done(Decided {
                sid,
                verdict,
                edits,
                data_chain,
            }) => {
                assert_eq!((sid, verdict), (SID, want));
                assert!(!self.chains.running(SID));
                (edits, data_chain)
            }
            other => panic!("wanted a verdict, got {other:?}"),
        }
    }

    fn expect_fail(&mut self, name: &str, why: &str) {
        let fid = id(&self.cfg, name);
        match self.step() {
            Step::Fail { fid: f, why: w } => {
                assert_eq!(f, fid);
                assert!(w.contains(why), "{w}");
            }
            other => panic!("wanted a failure, got {other:?}"),
        }
    }
}

fn proceed() -> FilterVerdict {
    FilterVerdict::Proceed {
        rewrite: None,
        junk: false,
    }
}

fn code(v: &FilterVerdict) -> u16 {
    match v {
        FilterVerdict::Reject(r) | FilterVerdict::Disconnect(r) => r.code,
        _ => 0,
    }
}

#[test]
fn every_filter_is_asked_in_order_then_the_chain_proceeds() {
    let mut d = Dialog::new(&["a", "b"]);
    d.query(Phase::Mail, "s@example.test")
        .expect_ask("a", Event::Mail("s@example.test".into()));
    d.decide("a", Decision::Proceed)
        .expect_ask("b", Event::Mail("s@example.test".into()));
    d.decide("b", Decision::Proceed).expect_verdict(proceed());
}

#[test]
fn the_first_refusal_wins() {
    let mut d = Dialog::new(&["a", "b"]);
    d.query(Phase::Rcpt, "r@example.test")
        .expect_ask("a", Event::Rcpt("r@example.test".into()));
    let want = FilterVerdict::Reject(Reply::new(550, "", "5.7.1 no"));
    d.decide("a", Decision::Reject(550, "5.7.1 no".into()))
        .expect_verdict(want);
}

#[test]
fn a_rewrite_is_what_the_next_filter_sees_and_the_verdict_carries() {
    let mut d = Dialog::new(&["a", "b"]);
    d.query(Phase::Helo, "old.example")
        .expect_ask("a", Event::Helo("old.example".into()));
    d.decide("a", Decision::Rewrite("new.example".into()))
        .expect_ask("b", Event::Helo("new.example".into()));
    d.decide("b", Decision::Junk)
        .expect_verdict(FilterVerdict::Proceed {
            rewrite: Some("new.example".into()),
            junk: true,
        });
}

#[test]
fn a_rewrite_where_there_is_nothing_to_rewrite_fails_the_filter() {
    let mut d = Dialog::new(&["a"]);
    d.query(Phase::Data, "").expect_ask("a", Event::Data);
    d.decide("a", Decision::Rewrite("x".into()))
        .expect_fail("a", "invalid rewrite");
    // The run still waits on it: failing the filter ends it, closed.
    let mut out = Vec::new();
    d.chains.fail_filter(id(&d.cfg, "a"), &mut out);
    d.steps = out;
    let v = d.expect_verdict(unavailable(Phase::Data));
    assert_eq!(v, (Vec::new(), Vec::new()));
}

#[test]
fn tempfail_at_connect_ends_the_session_and_later_defers() {
    let mut d = Dialog::new(&["a"]);
    d.query(Phase::Connect, "").expect_ask(
        "a",
        Event::Connect(
            "127.0.0.1:25".into(),
            "192.0.2.7:4321".into(),
            String::new(),
        ),
    );
    d.decide("a", Decision::Tempfail("busy\r\n".into()))
        .expect_verdict(FilterVerdict::Disconnect(Reply::new(421, "4.7.0", "busy")));
    d.query(Phase::Mail, "s@example.test")
        .expect_ask("a", Event::Mail("s@example.test".into()));
    d.decide("a", Decision::Tempfail(String::new()))
        .expect_verdict(FilterVerdict::Reject(Reply::new(
            451,
            "4.7.0",
            "Temporary failure, try again later",
        )));
}

#[test]
fn an_invalid_reply_becomes_421() {
    for decision in [
        Decision::Reject(250, "ok?".into()),
        Decision::Disconnect(550, "a\nb".into()),
    ] {
        let mut d = Dialog::new(&["a"]);
        d.query(Phase::Mail, "s@x.test");
        let _ = d.step();
        let want = FilterVerdict::Disconnect(invalid_reply());
        let (edits, _) = d.decide("a", decision).expect_verdict(want);
        assert!(edits.is_empty());
    }
}

#[test]
fn filters_not_hooked_on_the_phase_are_passed_over() {
    let mut d = Dialog::new(&["a", "b"]);
    d.state(
        "a",
        ProcState::Ready {
            hooks: event::CONNECT,
        },
    );
    d.query(Phase::Mail, "s@x.test")
        .expect_ask("b", Event::Mail("s@x.test".into()));
}

#[test]
fn a_filter_down_fails_closed_and_a_registering_one_is_waited_for() {
    let mut d = Dialog::new(&["a", "b"]);
    d.state("a", ProcState::Down);
    d.query(Phase::Helo, "c.example")
        .expect_verdict(unavailable(Phase::Helo));
    assert_eq!(code(&unavailable(Phase::Helo)), 421);
    assert_eq!(code(&unavailable(Phase::Rcpt)), 451);

    let mut d = Dialog::new(&["a", "b"]);
    d.state("b", ProcState::Registering);
    d.query(Phase::Mail, "s@x.test");
    let _ = d.step();
    d.decide("a", Decision::Proceed);
    let b = id(&d.cfg, "b");
    assert_eq!(d.step(), Step::AwaitRegistration { fid: b, sid: SID });
    d.state("b", ProcState::Ready { hooks: ALL });
    let states = d.states.clone();
    let state = move |f: FilterId| states.get(&f).copied().unwrap_or(ProcState::Down);
    let view = View {
        cfg: &d.cfg,
        state: &state,
    };
    d.chains.resume(SID, &view, &mut d.steps);
    d.expect_ask("b", Event::Mail("s@x.test".into()));
}

#[test]
fn answers_out_of_turn_or_out_of_place_fail_the_filter() {
    let mut d = Dialog::new(&["a", "b"]);
    d.query(Phase::Mail, "s@x.test");
    let _ = d.step();
    d.decide("b", Decision::Proceed)
        .expect_fail("b", "out of turn");
    d.edit("a", Edit::AddHeader("X".into(), "1".into()))
        .expect_fail("a", "out of place");
    d.decide("a", Decision::Discard)
        .expect_fail("a", "out of place");
    // A decision for a session without a run (it left) is nothing.
    d.chains.end(SID);
    d.decide("a", Decision::Proceed);
    assert!(d.steps.is_empty());
}

#[test]
fn end_of_message_edits_are_gathered_in_chain_order() {
    let mut d = Dialog::new(&["a", "b"]);
    d.query(Phase::Eom, "1234")
        .expect_ask("a", Event::Eom(1234));
    d.edit("a", Edit::AddHeader("X-A".into(), "1".into()));
    assert!(d.steps.is_empty());
    d.decide("a", Decision::Proceed)
        .expect_ask("b", Event::Eom(1234));
    d.edit("b", Edit::Quarantine("why".into()));
    let (edits, _) = d.decide("b", Decision::Proceed).expect_verdict(proceed());
    assert_eq!(
        edits,
        [
            Edit::AddHeader("X-A".into(), "1".into()),
            Edit::Quarantine("why".into())
        ]
    );
    let mut d = Dialog::new(&["a", "b"]);
    d.query(Phase::Eom, "9");
    let _ = d.step();
    d.decide("a", Decision::Discard)
        .expect_verdict(FilterVerdict::Discard);
}

#[test]
fn after_data_the_lines_go_through_the_filters_that_asked_for_them() {
    let mut d = Dialog::new(&["a", "b", "c"]);
    d.state(
        "b",
        ProcState::Ready {
            hooks: event::ANSWERED,
        },
    );
    d.query(Phase::Data, "").expect_ask("a", Event::Data);
    d.decide("a", Decision::Proceed)
        .expect_ask("b", Event::Data);
    d.decide("b", Decision::Proceed)
        .expect_ask("c", Event::Data);
    let (_, data) = d.decide("c", Decision::Proceed).expect_verdict(proceed());
    assert_eq!(data, [id(&d.cfg, "a"), id(&d.cfg, "c")]);
}

#[test]
fn built_in_filters_decide_inline() {
    let mut d = Dialog::new(&["nohelo", "a"]);
    d.query(Phase::Helo, "bad.example")
        .expect_verdict(FilterVerdict::Reject(Reply::new(550, "", "5.7.1 bad helo")));
    d.query(Phase::Helo, "good.example")
        .expect_ask("a", Event::Helo("good.example".into()));

    let mut d = Dialog::new(&["skip", "mark", "spam", "a"]);
    // bypass: the rest of the chain is skipped.
    d.query(Phase::Mail, "x@trusted.test")
        .expect_verdict(proceed());
    d.query(Phase::Mail, "x@junk.test")
        .expect_ask("a", Event::Mail("x@junk.test".into()));
    d.decide("a", Decision::Proceed)
        .expect_verdict(FilterVerdict::Proceed {
            rewrite: None,
            junk: true,
        });
    d.query(Phase::Mail, "spam@example.test")
        .expect_verdict(FilterVerdict::Disconnect(Reply::new(421, "", "4.7.0 go")));
}

#[test]
fn failing_a_filter_ends_only_the_runs_waiting_on_it() {
    let cfg = cfg();
    let (a, b) = (id(&cfg, "a"), id(&cfg, "b"));
    let ready = |_: FilterId| ProcState::Ready { hooks: ALL };
    let mut chains = Chains::new();
    let mut out = Vec::new();
    let q = |p| FilterQuery {
        phase: p,
        param: "p".into(),
    };
    let view = View {
        cfg: &cfg,
        state: &ready,
    };
    chains.start(
        1,
        vec![a],
        q(Phase::Mail),
        Facts::default(),
        &view,
        &mut out,
    );
    chains.start(
        2,
        vec![b],
        q(Phase::Rcpt),
        Facts::default(),
        &view,
        &mut out,
    );
    out.clear();
    chains.fail_filter(a, &mut out);
    assert_eq!(out, [done(1, unavailable(Phase::Mail))]);
    assert!(!chains.running(1) && chains.running(2));
}

#[test]
fn auth_asks_the_filters_that_answer_it_before_the_235() {
    const AUTH: Phase = Phase::Auth { mechanism: "PLAIN" };
    let ask = |user: &str| Event::Auth("PLAIN".into(), user.into());
    let mut d = Dialog::new(&["a", "b"]);
    // `a` did not register AUTH: it is not asked.
    d.state(
        "a",
        ProcState::Ready {
            hooks: event::MAIL | event::RCPT,
        },
    );
    d.query(AUTH, "alice").expect_ask("b", ask("alice"));
    d.decide("b", Decision::Proceed).expect_verdict(proceed());
    // JUNK lets the user in and marks the session.
    d.query(AUTH, "bob").expect_ask("b", ask("bob"));
    d.decide("b", Decision::Junk)
        .expect_verdict(FilterVerdict::Proceed {
            rewrite: None,
            junk: true,
        });
    // A refusal is the client's reply instead of the 235.
    d.query(AUTH, "mallory").expect_ask("b", ask("mallory"));
    d.decide("b", Decision::Reject(535, "5.7.8 Not from here".into()))
        .expect_verdict(FilterVerdict::Reject(Reply::new(
            535,
            "",
            "5.7.8 Not from here",
        )));
    // TEMPFAIL at AUTH is RFC 4954's temporary authentication failure.
    d.query(AUTH, "carol").expect_ask("b", ask("carol"));
    d.decide("b", Decision::Tempfail("directory down".into()))
        .expect_verdict(FilterVerdict::Reject(Reply::new(
            454,
            "4.7.0",
            "directory down",
        )));
    d.query(AUTH, "dave").expect_ask("b", ask("dave"));
    d.decide("b", Decision::Disconnect(421, "4.7.0 bye".into()))
        .expect_verdict(FilterVerdict::Disconnect(Reply::new(421, "", "4.7.0 bye")));
}

#[test]
fn auth_cannot_be_rewritten_and_fails_closed() {
    const AUTH: Phase = Phase::Auth { mechanism: "LOGIN" };
    let mut d = Dialog::new(&["a"]);
    d.query(AUTH, "eve")
        .expect_ask("a", Event::Auth("LOGIN".into(), "eve".into()));
    // Who a client is cannot be changed by a filter.
    d.decide("a", Decision::Rewrite("root".into()))
        .expect_fail("a", "invalid rewrite");
    let mut out = Vec::new();
    d.chains.fail_filter(id(&d.cfg, "a"), &mut out);
    d.steps = out;
    d.expect_verdict(unavailable(AUTH));
    assert_eq!(code(&unavailable(AUTH)), 451);
    // A filter that is down refuses the authentication for now.
    d.state("a", ProcState::Down);
    d.query(AUTH, "eve").expect_verdict(unavailable(AUTH));
    // The event's frame carries the mechanism and the user, nothing else.
    assert_eq!(
        Event::Auth("LOGIN".into(), "eve".into()).frame(),
        Frame::Auth {
            mechanism: b"LOGIN",
            user: b"eve",
        }
    );
}
