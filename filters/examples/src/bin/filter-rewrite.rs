//! Replaces a word in the body: `filter-rewrite FROM TO` (default: colour -> color).
use smtpd_filter::{Decision, Filter};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let from = args.next().unwrap_or_else(|| "colour".into());
    let to = args.next().unwrap_or_else(|| "color".into());
    // Sessions whose message is past its header section.
    let in_body: Rc<RefCell<HashSet<u64>>> = Rc::default();
    let (done, reset) = (in_body.clone(), in_body.clone());
    Filter::new("rewrite")
        .on_data_line(move |c, l, out| {
            let mut body = in_body.borrow_mut();
            if body.contains(&c.session) {
                out.push(
                    String::from_utf8_lossy(l)
                        .replace(from.as_str(), &to)
                        .into_bytes(),
                );
            } else {
                if l.is_empty() {
                    body.insert(c.session);
                }
                out.push(l.to_vec());
            }
        })
        .on_eom(move |c, _| {
            done.borrow_mut().remove(&c.session);
            Decision::Proceed
        })
        .on_rollback(move |c| {
            reset.borrow_mut().remove(&c.session);
        })
        .run()
}
