//! Limits concurrent sessions per client address: `filter-connlimit MAX` (default 5).
use smtpd_filter::{Decision, Filter};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Sessions by address, and the address of each session.
#[derive(Default)]
struct Counts {
    by_addr: HashMap<String, usize>,
    of_session: HashMap<u64, String>,
}

fn main() -> std::io::Result<()> {
    let max: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let state: Rc<RefCell<Counts>> = Rc::default();
    let on_close = state.clone();
    Filter::new("connlimit")
        .on_connect(move |c, x| {
            let ip = x
                .remote
                .rsplit_once(':')
                .map_or(x.remote.as_str(), |(h, _)| h)
                .to_string();
            let mut s = state.borrow_mut();
            let n = s.by_addr.entry(ip.clone()).or_insert(0);
            if *n >= max {
                return Decision::Disconnect(
                    421,
                    "4.7.0 Too many connections from your address".into(),
                );
            }
            *n += 1;
            s.of_session.insert(c.session, ip);
            Decision::Proceed
        })
        .on_disconnect(move |c| {
            let mut s = on_close.borrow_mut();
            if let Some(ip) = s.of_session.remove(&c.session) {
                if let Some(n) = s.by_addr.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        s.by_addr.remove(&ip);
                    }
                }
            }
        })
        .run()
}
