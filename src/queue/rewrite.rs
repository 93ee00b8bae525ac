//! End-of-message edits applied to an incoming message, on a lookup thread (never on
//! the loop).
//!
//! Only the header section is read and edited (`super::edit`). The new header block
//! is written to `incoming/MSGID.tmp`, the body is copied after it by the kernel
//! (`std::io::copy` between files is copy_file_range(2) on Linux: the body never
//! passes through the daemon's memory), and the file is renamed over the message. A
//! replaced body is written instead of copied. Nothing is synced here: the commit
//! syncs the new file with the rest of its round, and only then is the message
//! acknowledged; what a crash leaves in `incoming/` is removed at start.

use super::edit::{apply, Edit};
use super::spool::{create_temporary, Spool};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Bytes read at a time while looking for the end of the header section.
const CHUNK: usize = 16 * 1024;

/// Reads the header section of the first `len` bytes of `f`, up to and with the empty
/// line that ends it; returns it and the offset of the body (`len` when there is no
/// empty line: no body).
fn header_section(f: &File, len: u64) -> io::Result<(Vec<u8>, u64)> {
    let mut head = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut r = f.take(len);
    let mut scanned = 0;
    loop {
        while let Some(i) = memchr::memchr(b'\n', &head[scanned..]) {
            let nl = scanned + i;
            if nl == 0 || head[nl - 1] == b'\n' {
                head.truncate(nl + 1);
                return Ok((head, nl as u64 + 1));
            }
            scanned = nl + 1;
        }
        let n = match r.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let at = head.len() as u64;
            return Ok((head, at));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

impl Spool {
    /// Applies end-of-message `edits` (and, with `junk`, `X-Spam: Yes`; with
    /// `masquerade`, that address in the From fields) to the first `len` bytes of
    /// incoming message `msgid`; returns the new file, open for writing at its end, for
    /// the commit.
    pub fn edit_incoming(
        &self,
        msgid: u32,
        len: u64,
        edits: &[Edit],
        junk: bool,
        masquerade: Option<&str>,
    ) -> io::Result<File> {
        let path = self.incoming(msgid);
        let old = File::open(&path)?;
        let (head, body_at) = header_section(&old, len)?;
        let mut head = apply(&head, edits, junk);
        if let Some(address) = masquerade {
            head = super::masquerade::masquerade(&head, address);
        }
        let body = match edits.iter().any(|e| matches!(e, Edit::ReplaceBody(_))) {
            true => 0,
            false => len - body_at,
        };
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<File> {
            let mut f = create_temporary(&tmp)?;
            f.write_all(&head)?;
            if body > 0 {
                (&old).seek(SeekFrom::Start(body_at))?;
                if io::copy(&mut (&old).take(body), &mut f)? != body {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            fs::rename(&tmp, &path)?;
            Ok(f)
        };
        self.retry_short(|| {
            write().inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    const HEAD: &str = "Received: from x\n\tby y; date\nSubject: hi\nX-A: 1\n continued\nTo: a@b\n";

    fn edited(data: &[u8], written: u64, edits: &[Edit], junk: bool) -> Vec<u8> {
        let dir = TempDir::new("rewrite");
        let (spool, _) = Spool::open(&dir.0).unwrap();
        let (id, mut f) = spool.create_message().unwrap();
        f.write_all(data).unwrap();
        drop(f);
        let mut f = spool.edit_incoming(id, written, edits, junk, None).unwrap();
        let end = f.stream_position().unwrap();
        let out = fs::read(spool.incoming(id)).unwrap();
        assert_eq!(end, out.len() as u64, "the file is left at its end");
        assert!(!spool.incoming(id).with_extension("tmp").exists());
        out
    }

    fn edits() -> Vec<Edit> {
        vec![
            Edit::AddHeader("X-End".into(), "e".into()),
            Edit::InsertHeader(0, "X-First".into(), "f".into()),
            Edit::ChangeHeader(1, "x-a".into(), "2".into()),
        ]
    }

    #[test]
    fn the_same_as_editing_the_whole_message() {
        let big_body = "line of the body\n".repeat(20_000);
        let bodies = ["\nbody\n", "\n", "", "\n\n\nafter blank lines\n", &big_body];
        let sets = [
            edits(),
            vec![],
            vec![Edit::ReplaceBody(b"new\r\nbody".to_vec())],
            vec![Edit::ChangeHeader(1, "To".into(), String::new())],
        ];
        for body in bodies {
            let body = if body.len() > 1000 {
                format!("\n{body}")
            } else {
                body.to_string()
            };
            let msg = format!("{HEAD}{body}").into_bytes();
            for set in &sets {
                for junk in [false, true] {
                    let want = apply(&msg, set, junk);
                    let got = edited(&msg, msg.len() as u64, set, junk);
                    assert!(
                        got == want,
                        "body {:?} edits {set:?} junk {junk}",
                        &body[..body.len().min(40)]
                    );
                }
            }
        }
    }

    #[test]
    fn only_what_was_written_counts() {
        // A file taken back from free/ holds an older message past the new one's end.
        let msg = format!("{HEAD}\nbody\n").into_bytes();
        let mut data = msg.clone();
        data.extend_from_slice(b"old message left over\n\nold body\n");
        let got = edited(&data, msg.len() as u64, &edits(), true);
        assert_eq!(got, apply(&msg, &edits(), true));
        // A header section longer than what was written ends there.
        let got = edited(&data, 20, &edits(), false);
        assert_eq!(got, apply(&data[..20], &edits(), false));
    }

    #[test]
    fn a_missing_message_is_an_error() {
        let dir = TempDir::new("rewrite-missing");
        let (spool, _) = Spool::open(&dir.0).unwrap();
        assert!(spool
            .edit_incoming(0x1234, 10, &edits(), false, None)
            .is_err());
    }
}
