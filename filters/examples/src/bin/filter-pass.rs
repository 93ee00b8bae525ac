//! Lets everything through on every hook, data lines included: the cost of a filter
//! that does nothing (used by the benchmarks).
use smtpd_filter::{Decision, Filter};

fn main() -> std::io::Result<()> {
    Filter::new("pass")
        .on_connect(|_, _| Decision::Proceed)
        .on_helo(|_, _| Decision::Proceed)
        .on_ehlo(|_, _| Decision::Proceed)
        .on_mail(|_, _| Decision::Proceed)
        .on_rcpt(|_, _| Decision::Proceed)
        .on_data(|_| Decision::Proceed)
        .on_data_line(|_, l, out| out.push(l.to_vec()))
        .on_eom(|_, _| Decision::Proceed)
        .run()
}
