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
        .on_auth(|c, a| {
            eprintln!(
                "{:016x} auth mechanism={} user={}",
                c.session, a.mechanism, a.user
            );
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
        .on_tls(|c, t| {
            eprintln!(
                "{:016x} tls version={} cipher={} bits={} sni={} subject={}",
                c.session, t.version, t.cipher, t.bits, t.sni, t.subject
            )
        })
        .on_auth_result(|c, a, result| {
            eprintln!(
                "{:016x} auth-result mechanism={} user={} result={result}",
                c.session, a.mechanism, a.user
            )
        })
        .run()
}
