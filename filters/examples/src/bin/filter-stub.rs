//! Logs a line for each new session and lets everything through.
use smtpd_filter::{Decision, Filter};

fn main() -> std::io::Result<()> {
    Filter::new("stub")
        .on_connect(|ctx, c| {
            eprintln!(
                "filter-stub: session {:016x} from {}",
                ctx.session, c.remote
            );
            Decision::Proceed
        })
        .run()
}
