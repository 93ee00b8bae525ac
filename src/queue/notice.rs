//! Writes a delivery status notification into the spool, ready to commit: the report
//! (`super::bounce`) with the original message read from the spool, addressed to the
//! sender through the rules. Runs on the spool I/O thread.

use super::bounce::{self, Dsn, RcptReport};
use super::envelope::{new_evpid, Envelope};
use super::manager::Notice;
use super::spool::{CommitJob, Spool};
use crate::config::Config;
use crate::expand::expand;
use crate::mail::address::Mailbox;
use crate::mail::peer::MatchCtx;
use std::io::BufReader;

/// Bytes of the original message returned in a bounce (RET=FULL).
const BOUNCE_MAX_BODY: usize = 1024 * 1024;

/// Writes notification `n` (about its envelope and the others it names, all of one
/// message) to the sender, at `now`, in `incoming/`; returns the job that commits it.
pub fn make(cfg: &Config, spool: &Spool, n: &Notice, now: u64) -> Result<CommitJob, String> {
    let (env, kind) = (&n.env, n.kind);
    let (local, domain) = env.sender.rsplit_once('@').ok_or("sender has no domain")?;
    let to = Mailbox {
        local: local.to_string(),
        domain: domain.to_ascii_lowercase(),
    };
    let client = super::forward::local_client(&env.hostname);
    let null = Mailbox::default();
    let ctx = MatchCtx {
        client: &client,
        helo: &cfg.hostname,
        sender: &null,
    };
    let deliveries = expand(cfg, &ctx, &to).map_err(|r| r.summary())?;
    let (original, len) = spool.open_message(env.msgid()).map_err(|e| e.to_string())?;
    let date = crate::sys::rfc5322_date(now as i64);
    let arrival = crate::sys::rfc5322_date(env.ctime as i64);
    let retry_until =
        crate::sys::rfc5322_date(env.ctime.saturating_add(cfg.queue.ttl.as_secs()) as i64);
    let reports: Vec<RcptReport> = std::iter::once(env)
        .chain(&n.more)
        .map(|e| RcptReport {
            remote_mta: n.remote_mta.clone(),
            ..RcptReport::from_envelope(e, kind, &date, Some(&retry_until))
        })
        .collect();
    let (msgid, mut file) = spool.create_message().map_err(|e| e.to_string())?;
    let token = crate::sys::random_u64();
    let message_id = format!("{token:016x}.{msgid:08x}@{}", cfg.hostname);
    let boundary = format!("{token:016x}/{}", cfg.hostname);
    let dsn = Dsn {
        kind,
        reporting_mta: &cfg.hostname,
        from_host: &cfg.hostname,
        to: &env.sender,
        date: &date,
        message_id: &message_id,
        boundary: &boundary,
        envid: &env.dsn_envid,
        arrival_date: &arrival,
        // RFC 8689 §5: a notice about a REQUIRETLS message does not carry its
        // content over paths that may not protect it; a binary body (RFC 3030) cannot
        // go in a text notice: the header section only, then.
        ret_full: bounce::return_full(kind, &env.dsn_ret) && !env.requiretls && !env.body_binary,
        rcpts: &reports,
    };
    let result = bounce::render(
        &dsn,
        &mut BufReader::new(std::io::Read::take(original, len)),
        BOUNCE_MAX_BODY,
    )
    .and_then(|bytes| spool.write_data(&mut file, &bytes));
    if let Err(e) = result {
        spool.discard(msgid);
        return Err(e.to_string());
    }
    let mut envs: Vec<Envelope> = Vec::with_capacity(deliveries.len());
    for d in &deliveries {
        let taken: Vec<u64> = envs.iter().map(|e| e.evpid).collect();
        envs.push(Envelope {
            evpid: new_evpid(msgid, &taken),
            ctime: now,
            sender: String::new(),
            rcpt: env.sender.clone(),
            dest: d.dest.encode(),
            action: cfg.actions[d.action].name.clone(),
            helo: cfg.hostname.clone(),
            client: "local".into(),
            hostname: cfg.hostname.clone(),
            // Its To: header names a UTF-8 sender as it is.
            smtputf8: !env.sender.is_ascii(),
            // It travels as the message did.
            requiretls: env.requiretls,
            ..Envelope::default()
        });
    }
    spool
        .prepare_commit(msgid, file, &envs)
        .inspect_err(|_| {
            spool.discard(msgid);
        })
        .map_err(|e| e.to_string())
}
