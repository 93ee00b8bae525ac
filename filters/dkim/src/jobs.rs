//! The end of a message, finished off the reading thread: signing (RSA is the costly
//! part of the filter) and verifying (key lookups wait for the DNS), each on a pool
//! of threads that write their answers themselves.

use crate::config::Config;
use crate::dns::Resolver;
use crate::machine::{answer_results, Job, SigItem};
use crate::sign;
use crate::verify::{self, KeySource, Verdict};
use smtpd_filter::codec::{self, Frame};
use std::io::{self, Write};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Does a job: its edits and its answer go to `out`; verification asks `keys`.
pub fn run(job: Job, cfg: &Config, keys: &dyn KeySource, out: &mut Vec<u8>) {
    match job {
        Job::Sign { session, sigs } => {
            for u in sigs {
                match u.sign() {
                    Ok(value) => {
                        let f = Frame::InsertHeader {
                            index: 0,
                            name: sign::FIELD.as_bytes(),
                            value: value.as_bytes(),
                        };
                        codec::encode(session, &f, out);
                        if cfg.verbose {
                            eprintln!("{session:016x} signed: {}", value.replace("\r\n\t", " "));
                        }
                    }
                    // The message goes on unsigned: a failure here is ours, not the
                    // sender's.
                    Err(e) => eprintln!("{session:016x} not signed: {e}"),
                }
            }
            codec::encode(session, &Frame::Proceed, out);
        }
        Job::Verify {
            session,
            header,
            sigs,
            delete,
        } => {
            let verdicts: Vec<Verdict> = sigs
                .iter()
                .map(|s| match s {
                    SigItem::Unusable(u) => Verdict::unusable(u),
                    SigItem::Ready {
                        field,
                        sig,
                        body_hash,
                        body_len,
                    } => verify::verify(&header, *field, sig, body_hash, *body_len, keys),
                })
                .collect();
            let value = verify::results(&cfg.authserv_id, &verdicts);
            if cfg.verbose {
                eprintln!("{session:016x} {}", value.replace("\r\n\t", " "));
            }
            answer_results(session, &value, &delete, out);
        }
    }
}

/// Writes frames to the daemon: whole, flushed, one writer at a time.
pub fn send(bytes: &[u8]) -> io::Result<()> {
    let mut o = io::stdout().lock();
    o.write_all(bytes)?;
    o.flush()
}

/// Threads that do jobs.
pub struct Pool {
    tx: Sender<(Job, Instant)>,
}

impl Pool {
    /// `n` threads named `name`.
    pub fn new(
        n: usize,
        name: &str,
        cfg: Arc<Config>,
        resolver: Arc<Resolver>,
    ) -> io::Result<Pool> {
        let (tx, rx) = channel::<(Job, Instant)>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n.max(1) {
            let (rx, cfg, resolver) = (rx.clone(), cfg.clone(), resolver.clone());
            thread::Builder::new()
                .name(format!("{name}{i}"))
                .spawn(move || worker(&rx, &cfg, &resolver))?;
        }
        Ok(Pool { tx })
    }

    /// Hands a job over; verification gives up on lookups after `budget`.
    pub fn submit(&self, job: Job, budget: Duration) {
        // The workers only stop when the process does.
        let _ = self.tx.send((job, Instant::now() + budget));
    }
}

fn worker(rx: &Mutex<Receiver<(Job, Instant)>>, cfg: &Config, resolver: &Resolver) {
    let mut out = Vec::with_capacity(4096);
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok((job, deadline)) = next else {
            return;
        };
        out.clear();
        run(job, cfg, &resolver.until(deadline), &mut out);
        if send(&out).is_err() {
            // The daemon is gone: the reading thread sees it too and ends the process.
            return;
        }
    }
}
