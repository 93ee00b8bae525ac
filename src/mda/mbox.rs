//! mbox delivery: append one message to a mailbox file, with locking and mboxrd quoting.
//!
//! Locking follows mail.local: a dot-lock file `MAILBOX.lock` (created exclusively,
//! retried for up to ten seconds, taken over when older than five minutes) and an
//! exclusive flock(2) on the mailbox itself, so that readers using either scheme are
//! kept out. When the mailbox directory does not let this user create the dot-lock
//! (a root-owned `/var/mail` without the sticky-bit mode, say), delivery goes on
//! under flock alone. POSIX fcntl(2) locks are not taken.
//!
//! Each message starts with `From SENDER DATE` (DATE in asctime form, UTC) and ends
//! with an empty line. Body lines matching `^>*From ` get one more `>` (mboxrd), so
//! readers can undo the quoting exactly.
//!
//! The mailbox is opened with O_NOFOLLOW and must be a regular file: a symbolic link is
//! refused rather than followed.
//!
//! Every failure is a [`Outcome::TempFail`]; when it happens after writing began, the
//! mailbox is truncated back to its size before the delivery.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Outcome;

/// Buffer size for reading the message and writing the mailbox.
const CHUNK: usize = 64 * 1024;

/// How long to wait for the locks, how often to try, and when a dot-lock is stale.
#[derive(Debug, Clone, Copy)]
struct LockTimes {
    wait: Duration,
    retry: Duration,
    stale: Duration,
}

const LOCK_TIMES: LockTimes = LockTimes {
    wait: Duration::from_secs(10),
    retry: Duration::from_millis(200),
    stale: Duration::from_secs(5 * 60),
};

/// Appends `msg` to the mailbox at `path`, from envelope sender `sender` (empty for the
/// null sender, written `MAILER-DAEMON`).
///
/// The mailbox is created with mode 0600 when missing. See the module documentation for
/// locking, quoting and failures.
pub fn deliver(path: &Path, sender: &str, msg: &mut dyn Read) -> Outcome {
    match deliver_with(path, sender, msg, &LOCK_TIMES, unix_now()) {
        Ok(()) => {
            log::debug!("mbox delivered path={}", path.display());
            Outcome::Ok
        }
        Err(text) => Outcome::TempFail(text),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn deliver_with(
    path: &Path,
    sender: &str,
    msg: &mut dyn Read,
    times: &LockTimes,
    now: i64,
) -> Result<(), String> {
    let shown = path.display();
    let deadline = Instant::now() + times.wait;
    // Declared first so it is released last, after the mailbox is closed.
    let _dotlock = DotLock::acquire(path, times, deadline)
        .map_err(|e| format!("mbox: lock {shown}.lock: {e}"))?;
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("mbox: open {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("mbox: stat {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("mbox: {shown} is not a regular file"));
    }
    lock_file(&file, times, deadline).map_err(|e| format!("mbox: flock {shown}: {e}"))?;
    // The size under the lock is the one to come back to.
    let size = file
        .metadata()
        .map_err(|e| format!("mbox: stat {shown}: {e}"))?
        .len();
    let written = write_message(&file, sender, now, msg).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let undo = file.set_len(size).and_then(|()| file.sync_all());
        return Err(match undo {
            Ok(()) => format!("mbox: write {shown}: {e}"),
            Err(u) => format!("mbox: write {shown}: {e}; truncating back failed: {u}"),
        });
    }
    Ok(())
}

/// Writes the From_ line, the quoted message and the closing empty line.
fn write_message(file: &File, sender: &str, now: i64, msg: &mut dyn Read) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(CHUNK, file);
    writeln!(out, "From {} {}", from_name(sender), asctime(now))?;
    let mut input = BufReader::with_capacity(CHUNK, msg);
    let mut line = Vec::with_capacity(1024);
    let mut ends_with_newline = true;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if needs_quoting(&line) {
            out.write_all(b">")?;
        }
        out.write_all(&line)?;
        ends_with_newline = line.ends_with(b"\n");
    }
    if !ends_with_newline {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")?;
    out.flush()
}

/// The sender as written on the From_ line: white space and control characters would
/// break the line's fields, so they become `_`.
fn from_name(sender: &str) -> String {
    if sender.is_empty() {
        return "MAILER-DAEMON".to_string();
    }
    sender
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Whether `line` matches `^>*From ` and so needs one more `>`.
fn needs_quoting(line: &[u8]) -> bool {
    let start = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
    line[start..].starts_with(b"From ")
}

/// A Unix time in asctime(3) form, in UTC: `Thu Nov 26 11:39:40 2026`.
fn asctime(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Days since 1970-01-01 to a proleptic Gregorian date, counting in 400-year eras
    // that start on March 1st so that leap days fall at the end of each year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        year
    )
}

/// A held `MAILBOX.lock` file, removed on drop.
#[derive(Debug)]
struct DotLock {
    path: PathBuf,
}

impl DotLock {
    /// Creates the dot-lock of `mailbox`, waiting until `deadline` for another holder to
    /// let go. `Ok(None)` means the directory does not allow dot-locks for this user.
    fn acquire(
        mailbox: &Path,
        times: &LockTimes,
        deadline: Instant,
    ) -> io::Result<Option<DotLock>> {
        let mut name = OsString::from(mailbox.as_os_str());
        name.push(".lock");
        let path = PathBuf::from(name);
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    // The pid helps an administrator find the holder; failing to write
                    // it does not weaken the lock.
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Some(DotLock { path }));
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    log::debug!(
                        "mbox cannot create {}: {e}; relying on flock",
                        path.display()
                    );
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if is_stale(&path, times.stale) {
                        log::info!("mbox removing stale lock {}", path.display());
                        match fs::remove_file(&path) {
                            Ok(()) => continue,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "mailbox is locked by another process",
                        ));
                    }
                    std::thread::sleep(times.retry);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("mbox cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Whether the lock file at `path` was last modified more than `stale` ago.
fn is_stale(path: &Path, stale: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|mtime| SystemTime::now().duration_since(mtime).ok())
        .is_some_and(|age| age > stale)
}

/// Takes an exclusive flock on `file`, retrying until `deadline`.
fn lock_file(file: &File, times: &LockTimes, deadline: Instant) -> io::Result<()> {
    loop {
        if try_flock_exclusive(file)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "mailbox is locked by another process",
            ));
        }
        std::thread::sleep(times.retry);
    }
}

/// One non-blocking attempt at flock(LOCK_EX): `Ok(false)` when another open file holds
/// a lock (or a signal interrupted the call). The lock goes away when `file` is closed.
#[allow(unsafe_code)]
fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) only reads its two integer arguments and touches no memory of
    // ours; the descriptor stays open for the call because `file` is borrowed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::testutil::TempDir;

    const T: i64 = 1_700_000_000; // Tue Nov 14 22:13:20 2023 UTC

    const QUICK: LockTimes = LockTimes {
        wait: Duration::from_millis(300),
        retry: Duration::from_millis(20),
        stale: Duration::from_secs(300),
    };

    fn put(path: &Path, sender: &str, msg: &[u8]) -> Result<(), String> {
        deliver_with(path, sender, &mut &msg[..], &QUICK, T)
    }

    /// A reader that fails after handing out some bytes.
    struct Broken(usize);

    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("spool went away"));
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(b'y');
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn dates() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime(T), "Tue Nov 14 22:13:20 2023");
        assert_eq!(asctime(951_825_600), "Tue Feb 29 12:00:00 2000");
        assert_eq!(asctime(1_795_693_180), "Thu Nov 26 11:39:40 2026");
        assert_eq!(asctime(-1), "Wed Dec 31 23:59:59 1969");
    }

    #[test]
    fn quoting() {
        let t = TempDir::new("quote");
        let mbox = t.0.join("user");
        let msg = b"Received: x\nSubject: q\n\nFrom here\n>From there\n>>From afar\n\
                    Fromage\n From space\nFrom\n>From\n";
        put(&mbox, "a@b.c", msg).unwrap();
        let got = fs::read_to_string(&mbox).unwrap();
        assert_eq!(
            got,
            "From a@b.c Tue Nov 14 22:13:20 2023\nReceived: x\nSubject: q\n\n>From here\n\
             >>From there\n>>>From afar\nFromage\n From space\nFrom\n>From\n\n"
        );
        assert_eq!(
            fs::metadata(&mbox).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!t.0.join("user.lock").exists());
    }

    #[test]
    fn appends_and_terminates_lines() {
        let t = TempDir::new("append");
        let mbox = t.0.join("user");
        put(&mbox, "a@b.c", b"Subject: 1\n\none\n").unwrap();
        put(&mbox, "", b"Subject: 2\n\nno newline at end").unwrap();
        put(&mbox, "x y\n@z", b"").unwrap();
        let got = fs::read_to_string(&mbox).unwrap();
        assert_eq!(
            got,
            "From a@b.c Tue Nov 14 22:13:20 2023\nSubject: 1\n\none\n\n\
             From MAILER-DAEMON Tue Nov 14 22:13:20 2023\nSubject: 2\n\nno newline at end\n\n\
             From x_y_@z Tue Nov 14 22:13:20 2023\n\n"
        );
    }

    #[test]
    fn public_entry_point() {
        let t = TempDir::new("public");
        let mbox = t.0.join("user");
        assert_eq!(deliver(&mbox, "", &mut &b"hi\n"[..]), Outcome::Ok);
        let got = fs::read_to_string(&mbox).unwrap();
        assert!(got.starts_with("From MAILER-DAEMON "), "{got}");
        assert!(got.ends_with("\nhi\n\n"), "{got}");
    }

    #[test]
    fn failure_truncates_back() {
        let t = TempDir::new("trunc");
        let mbox = t.0.join("user");
        put(&mbox, "a@b.c", b"first\n").unwrap();
        let before = fs::read(&mbox).unwrap();
        // Big enough that some of it reaches the file before the error.
        let r = deliver_with(&mbox, "a@b.c", &mut Broken(300_000), &QUICK, T);
        assert!(r.is_err());
        assert_eq!(fs::read(&mbox).unwrap(), before);
        assert!(!t.0.join("user.lock").exists());
        let out = deliver(&mbox, "a@b.c", &mut Broken(10));
        assert!(matches!(out, Outcome::TempFail(_)), "{out:?}");
        assert_eq!(fs::read(&mbox).unwrap(), before);
    }

    #[test]
    fn busy_dotlock_times_out_and_stale_one_is_taken_over() {
        let t = TempDir::new("dotlock");
        let mbox = t.0.join("user");
        let lock = t.0.join("user.lock");
        fs::write(&lock, b"1\n").unwrap();
        let err = put(&mbox, "a@b.c", b"x\n").unwrap_err();
        assert!(err.contains("locked"), "{err}");
        assert!(!mbox.exists());
        assert!(lock.exists(), "someone else's lock stays");

        let old = SystemTime::now() - Duration::from_secs(600);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        put(&mbox, "a@b.c", b"x\n").unwrap();
        assert!(!lock.exists());
        assert!(fs::read_to_string(&mbox).unwrap().ends_with("\nx\n\n"));
    }

    #[test]
    fn busy_flock_times_out() {
        let t = TempDir::new("flock");
        let mbox = t.0.join("user");
        fs::write(&mbox, b"").unwrap();
        let holder = File::open(&mbox).unwrap();
        assert!(try_flock_exclusive(&holder).unwrap());
        let err = put(&mbox, "a@b.c", b"x\n").unwrap_err();
        assert!(err.contains("flock"), "{err}");
        assert_eq!(fs::metadata(&mbox).unwrap().len(), 0);
        assert!(!t.0.join("user.lock").exists());
        drop(holder);
        put(&mbox, "a@b.c", b"x\n").unwrap();
    }

    #[test]
    fn symlink_and_directory_are_refused() {
        let t = TempDir::new("symlink");
        let target = t.0.join("target");
        fs::write(&target, b"").unwrap();
        let link = t.0.join("user");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = deliver(&link, "a@b.c", &mut &b"x\n"[..]);
        assert!(matches!(out, Outcome::TempFail(_)), "{out:?}");
        assert_eq!(fs::metadata(&target).unwrap().len(), 0);

        let dir = t.0.join("dir");
        fs::create_dir(&dir).unwrap();
        let out = deliver(&dir, "a@b.c", &mut &b"x\n"[..]);
        assert!(matches!(out, Outcome::TempFail(_)), "{out:?}");
    }

    #[test]
    fn unwritable_directory_falls_back_to_flock() {
        if crate::sys::geteuid() == 0 {
            return; // root ignores the mode bits
        }
        let t = TempDir::new("nodotlock");
        let mbox = t.0.join("user");
        fs::write(&mbox, b"").unwrap();
        fs::set_permissions(&t.0, fs::Permissions::from_mode(0o500)).unwrap();
        let r = put(&mbox, "a@b.c", b"x\n");
        fs::set_permissions(&t.0, fs::Permissions::from_mode(0o700)).unwrap();
        r.unwrap();
        assert!(fs::read_to_string(&mbox).unwrap().ends_with("\nx\n\n"));
    }

    #[test]
    fn quoting_rule() {
        assert!(needs_quoting(b"From x\n"));
        assert!(needs_quoting(b">>>From x"));
        assert!(!needs_quoting(b"From\n"));
        assert!(!needs_quoting(b"from x\n"));
        assert!(!needs_quoting(b">"));
        assert!(!needs_quoting(b""));
    }
}
