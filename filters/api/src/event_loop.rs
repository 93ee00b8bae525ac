//! The glue's loop: the daemon's pipe, the filter's own descriptors and its timers
//! on one mio poll, in one thread.

use crate::ctx::{Interest, Ready, WatchFn};
use crate::filter::Filter;
use crate::pending::WatchChange;
use crate::sys;
use mio::unix::SourceFd;
use mio::{Events, Poll, Token};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// The token of the daemon's pipe; a watched descriptor's token is its number.
const INPUT: Token = Token(usize::MAX);

/// Writes all of `buf` to `w`, waiting while it would block.
fn write_out(w: &mut File, buf: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match w.write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sys::wait_writable(w.as_fd())?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn mio_interest(i: Interest) -> Option<mio::Interest> {
    match (i.read, i.write) {
        (true, true) => Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
        (true, false) => Some(mio::Interest::READABLE),
        (false, true) => Some(mio::Interest::WRITABLE),
        (false, false) => None,
    }
}

/// A watched descriptor: its callback (out of the map while it runs).
struct Watch {
    f: Option<WatchFn>,
}

/// Applies the watches the callbacks asked for.
fn apply_changes(
    poll: &Poll,
    watches: &mut HashMap<RawFd, Watch>,
    changes: Vec<WatchChange>,
) -> io::Result<()> {
    for c in changes {
        match c {
            WatchChange::Watch(fd, interest, f) => {
                let Some(i) = mio_interest(interest) else {
                    if watches.remove(&fd).is_some() {
                        poll.registry().deregister(&mut SourceFd(&fd))?;
                    }
                    continue;
                };
                let Ok(token) = usize::try_from(fd) else {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
                };
                if watches.insert(fd, Watch { f: Some(f) }).is_some() {
                    poll.registry()
                        .reregister(&mut SourceFd(&fd), Token(token), i)?;
                } else {
                    poll.registry()
                        .register(&mut SourceFd(&fd), Token(token), i)?;
                }
            }
            WatchChange::Unwatch(fd) => {
                if watches.remove(&fd).is_some() {
                    poll.registry().deregister(&mut SourceFd(&fd))?;
                }
            }
        }
    }
    Ok(())
}

impl Filter {
    /// Speaks the protocol on `input` and `output` (both may be one socket) until the
    /// daemon closes it, serving the filter's descriptors and timers meanwhile.
    pub fn run_fd(mut self, input: OwnedFd, output: OwnedFd) -> io::Result<()> {
        sys::set_nonblocking(input.as_fd())?;
        let in_fd = input.as_raw_fd();
        let mut input = File::from(input);
        let mut output = File::from(output);
        let mut poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&in_fd), INPUT, mio::Interest::READABLE)?;
        let mut watches: HashMap<RawFd, Watch> = HashMap::new();
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        self.start(&mut out);
        write_out(&mut output, &out)?;
        out.clear();
        loop {
            let changes = std::mem::take(&mut self.pending.changes);
            apply_changes(&poll, &mut watches, changes)?;
            let timeout = self
                .pending
                .next_due()
                .map(|at| at.saturating_duration_since(Instant::now()));
            match poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            }
            let mut eof = false;
            for ev in events.iter() {
                if ev.token() == INPUT {
                    // Edge-triggered: read until the pipe is empty.
                    loop {
                        match input.read(&mut buf) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(n) => self.feed(&buf[..n], &mut out)?,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    continue;
                }
                let fd = ev.token().0 as RawFd;
                let ready = Ready {
                    readable: ev.is_readable() || ev.is_error() || ev.is_read_closed(),
                    writable: ev.is_writable() || ev.is_error() || ev.is_write_closed(),
                };
                let Some(mut f) = watches.get_mut(&fd).and_then(|w| w.f.take()) else {
                    continue;
                };
                let mut ctx = self.pending.ctx(0);
                f(&mut ctx, ready);
                if let Some(w) = watches.get_mut(&fd) {
                    w.f = Some(f);
                }
                self.pending.apply(ctx, Instant::now(), &mut out);
            }
            let now = Instant::now();
            while let Some(f) = self.pending.take_due(now) {
                let mut ctx = self.pending.ctx(0);
                f(&mut ctx);
                self.pending.apply(ctx, Instant::now(), &mut out);
            }
            write_out(&mut output, &out)?;
            out.clear();
            if eof {
                return Ok(());
            }
        }
    }
}
