//! Refuses messages that contain one of the words given as arguments (554).
//! Usage: filter-keyword WORD...
use smtpd_filter::{Decision, Filter};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

fn main() -> std::io::Result<()> {
    let words: Vec<String> = std::env::args().skip(1).map(|w| w.to_lowercase()).collect();
    // Sessions whose current message matched.
    let hits: Rc<RefCell<HashSet<u64>>> = Rc::default();
    let (h1, h2, h3) = (hits.clone(), hits.clone(), hits);
    Filter::new("keyword")
        .on_data_line(move |c, l, out| {
            let line = String::from_utf8_lossy(l).to_lowercase();
            if words.iter().any(|w| line.contains(w.as_str())) {
                h1.borrow_mut().insert(c.session);
            }
            out.push(l.to_vec());
        })
        .on_eom(move |c, _| {
            if h2.borrow_mut().remove(&c.session) {
                Decision::Reject(554, "5.7.1 Message refused: forbidden content".into())
            } else {
                Decision::Proceed
            }
        })
        // A message refused before its end never reaches EOM: forget it here.
        .on_rollback(move |c| {
            h3.borrow_mut().remove(&c.session);
        })
        .run()
}
