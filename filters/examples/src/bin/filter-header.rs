//! Adds a header to every message: `filter-header NAME VALUE` (default X-Filtered: yes).
use smtpd_filter::{Decision, Filter};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "X-Filtered".into());
    let value = args.next().unwrap_or_else(|| "yes".into());
    Filter::new("header")
        .on_eom(move |c, _| {
            c.add_header(&name, &value);
            Decision::Proceed
        })
        .run()
}
