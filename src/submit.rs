//! Local submission: `sendmail` and the offline queue.
//!
//! `sendmail` speaks SMTP to the daemon over the control socket (the session is "from
//! local"). When the daemon is down it leaves the message in `QUEUE/offline/`, a
//! directory only the daemon's group may write to (the binary is installed setgid
//! `_smtpq`, and keeps that group only to create the file); the daemon submits those
//! files at start, each as the user who owns it.

use crate::queue::spool::Spool;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// First line of an offline file.
const OFFLINE_MAGIC: &str = "smtpd-offline 1";
/// Largest message accepted on standard input.
const MAX_INPUT: u64 = 64 * 1024 * 1024;

/// An envelope and a message to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// MAIL FROM.
    pub sender: String,
    /// RCPT TO, one each.
    pub rcpts: Vec<String>,
    /// The message, LF line ends.
    pub message: Vec<u8>,
}

fn read_reply(r: &mut BufReader<UnixStream>) -> io::Result<(u16, String)> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            ));
        }
        // The control socket turned the client away before SMTP started.
        if let Some(why) = line.strip_prefix("error: ") {
            return Err(io::Error::other(format!(
                "the daemon refused: {}",
                why.trim_end()
            )));
        }
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"))
            })?;
        text.push_str(line.trim_end());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
        text.push(' ');
    }
}

fn command(
    w: &mut UnixStream,
    r: &mut BufReader<UnixStream>,
    cmd: &str,
    want: u16,
) -> io::Result<()> {
    w.write_all(cmd.as_bytes())?;
    w.write_all(b"\r\n")?;
    let (code, text) = read_reply(r)?;
    if code != want {
        return Err(io::Error::other(format!("{cmd}: {text}")));
    }
    Ok(())
}

/// Converts LF text into SMTP content: CR LF line ends, dot-stuffing, lone CRs dropped.
/// Lines are kept whole, however long: the daemon takes them as they are.
pub fn to_smtp(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 8);
    for line in message.split(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend(line.iter().copied().filter(|&b| b != b'\r'));
        out.extend_from_slice(b"\r\n");
    }
    // The split yields an empty last piece after a final LF: drop its CR LF.
    if message.ends_with(b"\n") {
        out.truncate(out.len() - 2);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// What the daemon made of a submission.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The final reply of each transaction that carried the message (none when every
    /// recipient was refused).
    pub replies: Vec<String>,
    /// The recipients refused for good, each with the daemon's reply.
    pub refused: Vec<(String, String)>,
}

/// Submits over the control socket, as Postfix's sendmail does in effect: a recipient
/// the daemon refuses for good (5xx) is left out and reported in
/// [`Submitted::refused`], the others get the message. A recipient refused for now
/// (4xx) fails the whole submission before any content is sent, so that it can be
/// tried again as a whole, except "too many recipients" (452 4.5.3), which only moves
/// the rest to a transaction of their own.
pub fn submit(socket: &Path, s: &Submission) -> io::Result<Submitted> {
    let content = to_smtp(&s.message);
    let mut w = UnixStream::connect(socket)?;
    w.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut r = BufReader::new(w.try_clone()?);
    crate::control::send_command(&mut w, "smtp")?;
    let (code, text) = read_reply(&mut r)?;
    if code != 220 {
        return Err(io::Error::other(text));
    }
    command(&mut w, &mut r, "EHLO localhost", 250)?;
    let mut done = Submitted::default();
    let mut rest: &[String] = &s.rcpts;
    // RFC 6531: a UTF-8 address needs SMTPUTF8.
    let utf8 = !s.sender.is_ascii() || s.rcpts.iter().any(|r| !r.is_ascii());
    let mail = format!(
        "MAIL FROM:<{}>{}",
        s.sender,
        if utf8 { " SMTPUTF8" } else { "" }
    );
    while !rest.is_empty() {
        command(&mut w, &mut r, &mail, 250)?;
        let mut accepted = 0;
        let mut next = rest.len();
        for (i, rc) in rest.iter().enumerate() {
            w.write_all(format!("RCPT TO:<{rc}>\r\n").as_bytes())?;
            let (code, text) = read_reply(&mut r)?;
            match code {
                250 | 251 => accepted += 1,
                452 if accepted > 0 && text.contains("4.5.3") => {
                    next = i;
                    break;
                }
                500..=599 => done.refused.push((rc.clone(), text)),
                _ => {
                    let _ = command(&mut w, &mut r, "RSET", 250);
                    let _ = command(&mut w, &mut r, "QUIT", 221);
                    return Err(io::Error::other(format!("RCPT TO:<{rc}>: {text}")));
                }
            }
        }
        rest = &rest[next..];
        if accepted == 0 {
            command(&mut w, &mut r, "RSET", 250)?;
            continue;
        }
        command(&mut w, &mut r, "DATA", 354)?;
        w.write_all(&content)?;
        let (code, text) = read_reply(&mut r)?;
        if code != 250 {
            let _ = command(&mut w, &mut r, "QUIT", 221);
            return Err(io::Error::other(text));
        }
        done.replies.push(text);
    }
    let _ = command(&mut w, &mut r, "QUIT", 221);
    Ok(done)
}

/// The delivery status notification (RFC 3464) that returns a message to its sender
/// for the recipients the daemon refused, with the whole message attached.
pub fn refusal_report(
    s: &Submission,
    refused: &[(String, String)],
    host: &str,
) -> io::Result<Vec<u8>> {
    use crate::queue::bounce::{self, Dsn, DsnKind, RcptReport};
    let date = crate::sys::now_rfc5322();
    let rcpts: Vec<RcptReport> = refused
        .iter()
        .map(|(rcpt, reply)| RcptReport {
            rcpt: rcpt.clone(),
            status: bounce::status_of(reply, true),
            diagnostic: bounce::diagnostic_of(reply),
            last_attempt: date.clone(),
            ..RcptReport::default()
        })
        .collect();
    let token = crate::sys::random_u64();
    let message_id = format!("{token:016x}.sendmail@{host}");
    let boundary = format!("{token:016x}/{host}");
    let dsn = Dsn {
        kind: DsnKind::Failed,
        reporting_mta: host,
        from_host: host,
        to: &s.sender,
        date: &date,
        message_id: &message_id,
        boundary: &boundary,
        envid: "",
        arrival_date: &date,
        ret_full: true,
        rcpts: &rcpts,
    };
    bounce::render(&dsn, &mut &s.message[..], MAX_INPUT as usize)
}

/// Mails the refusals of `done` back to the sender of `s` as a delivery status
/// notification submitted from the null sender. An error when there is no one to tell
/// (the sender is `<>`) or the daemon did not take the report.
pub fn return_refused(
    socket: &Path,
    s: &Submission,
    done: &Submitted,
    host: &str,
) -> io::Result<()> {
    if done.refused.is_empty() {
        return Ok(());
    }
    if s.sender.is_empty() {
        return Err(io::Error::other(
            "the sender is <>: the refusals cannot be mailed back",
        ));
    }
    let report = Submission {
        sender: String::new(),
        rcpts: vec![s.sender.clone()],
        message: refusal_report(s, &done.refused, host)?,
    };
    let sent = submit(socket, &report)?;
    match sent.refused.first() {
        Some((_, why)) => Err(io::Error::other(format!(
            "the report to <{}> was refused: {why}",
            s.sender
        ))),
        None => Ok(()),
    }
}

fn esc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_graphic() && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn unesc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The offline file form of a submission.
pub fn encode_offline(s: &Submission) -> Vec<u8> {
    let mut out = format!("{OFFLINE_MAGIC}\nsender {}\n", esc(&s.sender)).into_bytes();
    for r in &s.rcpts {
        out.extend_from_slice(format!("rcpt {}\n", esc(r)).as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(&s.message);
    out
}

/// Parses an offline file.
pub fn decode_offline(data: &[u8]) -> Option<Submission> {
    let mut rest = data;
    let mut next_line = || -> Option<String> {
        let i = memchr::memchr(b'\n', rest)?;
        let l = std::str::from_utf8(&rest[..i]).ok()?.to_string();
        rest = &rest[i + 1..];
        Some(l)
    };
    if next_line()? != OFFLINE_MAGIC {
        return None;
    }
    let sender = unesc(next_line()?.strip_prefix("sender ")?)?;
    let mut rcpts = Vec::new();
    loop {
        let l = next_line()?;
        if l.is_empty() {
            break;
        }
        rcpts.push(unesc(l.strip_prefix("rcpt ")?)?);
    }
    if rcpts.is_empty() {
        return None;
    }
    Some(Submission {
        sender,
        rcpts,
        message: rest.to_vec(),
    })
}

/// Leaves a submission in `offline/` for the daemon to enqueue at start. The file is
/// readable by its owner only (the daemon's parent reads it as root). With `setgid`
/// (the group a setgid binary set aside), the group is taken back only for the
/// creation of the file and given up for good before anything is written, and only
/// in a directory the daemon made for it (see [`offline_dir_of_the_group`]).
pub fn write_offline(
    spool_root: &Path,
    s: &Submission,
    setgid: Option<u32>,
) -> io::Result<std::path::PathBuf> {
    let dir = spool_root.join("offline");
    // The group's right to write is used in no other directory than the one checked:
    // it becomes the working directory (with the group: searching it needs it), and
    // the file is created by its name alone.
    let checked = match setgid {
        Some(g) => Some(offline_dir_of_the_group(&dir, g)?),
        None => None,
    };
    let base = if checked.is_some() {
        Path::new(".").to_path_buf()
    } else {
        dir.clone()
    };
    let (mut f, path) = loop {
        let name = format!("{:016x}", crate::sys::random_u64());
        let (path, shown) = (base.join(&name), dir.join(&name));
        let old_mask = crate::sys::set_umask(0o077);
        if let Some(g) = setgid {
            crate::sys::resume_setgid(g);
        }
        let r = checked
            .as_ref()
            .map_or(Ok(()), crate::sys::fchdir)
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
            });
        if setgid.is_some() {
            crate::sys::drop_setgid()?;
        }
        crate::sys::set_umask(old_mask);
        match r {
            Ok(f) => break (f, shown),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && setgid.is_none() => continue,
            Err(e) => return Err(e),
        }
    };
    f.write_all(&encode_offline(s))?;
    f.sync_all()?;
    Ok(path)
}

/// Opens `dir` (not through a symbolic link) and checks that it is an offline queue
/// as the daemon makes it for group `gid`: a directory owned by root and that group,
/// mode 1770. A user who points the setgid `sendmail` at another spool (through its
/// working directory) thus cannot use the group to write anywhere else.
fn offline_dir_of_the_group(dir: &Path, gid: u32) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)?;
    let md = d.metadata()?;
    if md.uid() != 0 || md.gid() != gid || md.mode() & 0o7777 != 0o1770 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: not an offline queue of the daemon (owner root, group {gid}, mode 1770)",
                dir.display()
            ),
        ));
    }
    Ok(d)
}

/// Reads standard input up to `MAX_INPUT`; with `dot_ends` a line of a single `.`
/// ends the message (sendmail without `-i`).
pub fn read_message(input: &mut dyn Read, dot_ends: bool) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    input.take(MAX_INPUT + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_INPUT {
        return Err(io::Error::other("message too large"));
    }
    if dot_ends {
        let mut pos = 0;
        for line in data.split_inclusive(|&b| b == b'\n') {
            if line == b".\n" || line == b".\r\n" || line == b"." {
                data.truncate(pos);
                break;
            }
            pos += line.len();
        }
    }
    if !data.is_empty() && !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    Ok(data)
}

/// The header section's fields (name, unfolded value), in order.
pub fn headers(message: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Addresses in an address-list header value (`a@b, "N" <c@d>`), simply parsed.
pub fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut quoted = false;
    let mut cur = String::new();
    for c in value.chars().chain(std::iter::once(',')) {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            ',' if !quoted && depth == 0 => {
                let item = cur.trim();
                let addr = match (item.rfind('<'), item.rfind('>')) {
                    (Some(a), Some(b)) if a < b => &item[a + 1..b],
                    _ => item,
                };
                if addr.contains('@') || (!addr.is_empty() && !addr.contains(' ')) {
                    out.push(addr.trim().to_string());
                }
                cur.clear();
                continue;
            }
            _ => {}
        }
        if depth == 0 || c == ')' {
            cur.push(c);
        }
    }
    out
}

/// Removes `Bcc:` lines (and their continuations) from the header section (`-t`).
pub fn strip_bcc(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut in_headers = true;
    let mut skipping = false;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if in_headers {
            if line == b"\n" || line == b"\r\n" {
                in_headers = false;
            } else if line.starts_with(b" ") || line.starts_with(b"\t") {
                if skipping {
                    continue;
                }
            } else {
                skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
                if skipping {
                    continue;
                }
            }
        }
        out.extend_from_slice(line);
    }
    out
}

/// Adds `From:`, `Date:` and `Message-ID:` when the message lacks them, as local
/// submission programs traditionally do.
pub fn complete_headers(message: &[u8], from: &str, hostname: &str) -> Vec<u8> {
    let h = headers(message);
    let has = |n: &str| h.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let mut top = String::new();
    if !has("From") {
        top.push_str(&format!("From: {from}\n"));
    }
    if !has("Date") {
        top.push_str(&format!("Date: {}\n", crate::sys::now_rfc5322()));
    }
    if !has("Message-ID") {
        top.push_str(&format!(
            "Message-ID: <{:016x}@{hostname}>\n",
            crate::sys::random_u64()
        ));
    }
    let mut out = top.into_bytes();
    // A message that starts with its body (no header section) gets an empty line.
    if h.is_empty() && !message.starts_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(message);
    out
}

/// Submits every file of `offline/`, each as its owner; used by the parent at start.
/// Returns how many were submitted. What is not an offline submission (a directory,
/// symbolic link, FIFO or socket, a file that cannot be decoded) is moved to corrupt/
/// with a warning; a file with other links is removed.
pub fn flush_offline(spool: &Spool, socket: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let dir = spool.root().join("offline");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let euid = crate::sys::geteuid();
    let not_a_file = |path: &Path, ft: std::fs::FileType| {
        let kind = crate::queue::tidy::Kind::of(ft);
        spool.quarantine(
            path,
            &format!("{} where a file is expected", kind.article()),
        );
    };
    let mut n = 0;
    for ent in entries.flatten() {
        let path = ent.path();
        // Neither followed (O_NOFOLLOW) nor waited on (O_NONBLOCK: a FIFO).
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                match std::fs::symlink_metadata(&path) {
                    Ok(md) if !md.is_file() => not_a_file(&path, md.file_type()),
                    _ => log::warn!("offline: {}: {e}", path.display()),
                }
                continue;
            }
        };
        let Ok(md) = f.metadata() else { continue };
        // Only root submits as another user. A daemon started by a plain user (whose
        // spool may lead to another's offline/) leaves other users' files alone.
        if euid != 0 && md.uid() != euid {
            log::warn!(
                "offline: {}: owned by uid {}, not ours: left alone",
                path.display(),
                md.uid()
            );
            continue;
        }
        if !md.is_file() {
            not_a_file(&path, md.file_type());
            continue;
        }
        if md.nlink() != 1 {
            log::warn!(
                "offline: {}: a file with other links, removed",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match submit_as(f, md.uid(), md.gid(), socket) {
            Ok(()) => {
                n += 1;
                let _ = std::fs::remove_file(&path);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                log::warn!("offline: {}: {e}; removed", path.display());
                let _ = std::fs::remove_file(&path);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                spool.quarantine(&path, &format!("not an offline submission ({e})"));
            }
            Err(e) => log::warn!("offline: {}: {e}", path.display()),
        }
    }
    n
}

/// Submits an open offline file in a child running as `uid`, so that the daemon sees
/// the submitting user, never root, on the control socket.
fn submit_as(mut f: File, uid: u32, gid: u32, socket: &Path) -> io::Result<()> {
    let mut data = Vec::new();
    (&mut f).take(MAX_INPUT + 4096).read_to_end(&mut data)?;
    let sub = decode_offline(&data)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed offline file"))?;
    match crate::sys::fork()? {
        None => {
            let host = crate::config::default_hostname();
            let code =
                match crate::sys::drop_privileges(uid, gid).and_then(|()| submit(socket, &sub)) {
                    Ok(done) => {
                        for (rcpt, why) in &done.refused {
                            log::warn!("offline: <{rcpt}> refused: {why}");
                        }
                        if let Err(e) = return_refused(socket, &sub, &done, &host) {
                            log::warn!("offline: {e}");
                        }
                        0
                    }
                    Err(e) => {
                        log::warn!("offline: submission failed: {e}");
                        // A refusal (5xx) will not change: tell the parent to drop the file.
                        let t = e.to_string();
                        if t.starts_with('5') || t.contains(": 5") {
                            2
                        } else {
                            1
                        }
                    }
                };
            crate::sys::exit_now(code);
        }
        Some(pid) => {
            let status = crate::sys::wait_pid(pid)?;
            if status == 0 {
                Ok(())
            } else if status == 2 {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "refused by the daemon",
                ))
            } else {
                Err(io::Error::other(format!(
                    "submission process exited with {status}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_conversion() {
        assert_eq!(
            to_smtp(b"a\n.b\n\n.\n"),
            b"a\r\n..b\r\n\r\n..\r\n.\r\n".to_vec()
        );
        assert_eq!(to_smtp(b"no newline"), b"no newline\r\n.\r\n".to_vec());
        assert_eq!(to_smtp(b"cr\r\nlf\n"), b"cr\r\nlf\r\n.\r\n".to_vec());
        let long = [b'x'; 5000];
        assert_eq!(to_smtp(&long), [&long[..], b"\r\n.\r\n"].concat());
    }

    #[test]
    fn offline_round_trip() {
        let s = Submission {
            sender: "a b@c".into(),
            rcpts: vec!["x@y".into(), "%z".into()],
            message: b"Subject: x\n\nbody\n".to_vec(),
        };
        assert_eq!(decode_offline(&encode_offline(&s)), Some(s));
        assert_eq!(decode_offline(b"junk\n"), None);
    }

    #[test]
    fn header_helpers() {
        let m = b"To: a@b.c, \"X, Y\" <d@e.f>\nBcc: h@i.j,\n k@l.m\nSubject: s\n\nBcc: body\n";
        let h = headers(m);
        assert_eq!(addresses(&h[0].1), ["a@b.c", "d@e.f"]);
        assert_eq!(addresses(&h[1].1), ["h@i.j", "k@l.m"]);
        assert_eq!(
            strip_bcc(m),
            b"To: a@b.c, \"X, Y\" <d@e.f>\nSubject: s\n\nBcc: body\n".to_vec()
        );
        let done = complete_headers(b"Subject: s\n\nx\n", "u@h", "h");
        let h = headers(&done);
        assert!(h.iter().any(|(k, _)| k == "From") && h.iter().any(|(k, _)| k == "Message-ID"));
        assert_eq!(
            read_message(&mut &b"a\n.\nb\n"[..], true).ok(),
            Some(b"a\n".to_vec())
        );
        assert_eq!(
            read_message(&mut &b"a\n.\nb"[..], false).ok(),
            Some(b"a\n.\nb\n".to_vec())
        );
    }
}
