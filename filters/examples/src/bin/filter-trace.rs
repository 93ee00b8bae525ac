//! Prints every event it sees, with its parameters, on standard error.
use smtpd_filter::{Decision, Filter};

fn main() -> std::io::Result<()> {
    Filter::new("trace")
        .on_connect(|c, x| {
            eprintln!(
                "{:016x} connect local={} remote={} hostname={}",
                c.session, x.local, x.remote, x.hostname
            );
            Decision::Proceed
        })
        .on_helo(|c, h| {
            eprintln!("{:016x} helo {h}", c.session);
            Decision::Proceed
        })
        .on_ehlo(|c, h| {
            eprintln!("{:016x} ehlo {h}", c.session);
            Decision::Proceed
        })
        .on_mail(|c, a| {
            eprintln!("{:016x} mail <{a}>", c.session);
            Decision::Proceed
        })
        .on_rcpt(|c, a| {
            eprintln!("{:016x} rcpt <{a}>", c.session);
            Decision::Proceed
        })
        .on_data(|c| {
            eprintln!("{:016x} data", c.session);
            Decision::Proceed
        })
        .on_data_line(|c, l, out| {
            eprintln!(
                "{:016x} data-line {}",
                c.session,
                String::from_utf8_lossy(l)
            );
            out.push(l.to_vec());
        })
        .on_eom(|c, size| {
            eprintln!("{:016x} eom size={size}", c.session);
            Decision::Proceed
        })
        .on_commit(|c, id| eprintln!("{:016x} commit {id}", c.session))
        .on_rollback(|c| eprintln!("{:016x} rollback", c.session))
        .on_disconnect(|c| eprintln!("{:016x} disconnect", c.session))
        .run()
}
