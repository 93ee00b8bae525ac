//! End-of-message edits applied to an incoming message, on a lookup thread (never on
//! the loop).
//!
//! Only the header section is read and edited (`super::edit`). A message in clear of
//! at most [`IN_PLACE_MAX`] octets is rewritten in its own file: its body is read, and
//! the new header section and the body written over it from the start (no inode made
//! and renamed per message, which is most of what a new file costs). A larger or
//! sealed one gets a new file: the new header block is written to
//! `incoming/MSGID.tmp`, the body is copied after it by the kernel (`std::io::copy`
//! between files is copy_file_range(2) on Linux: the body never passes through the
//! daemon's memory), and the file is renamed over the message. A replaced body is
//! written instead of copied. Nothing is synced here: the commit syncs the file with
//! the rest of its round, and only then is the message acknowledged; what a crash
//! leaves in `incoming/` (a message half rewritten included) is removed at start.

use super::edit::{apply, Edit};
use super::spool::{create_temporary, MessageFile, Spool};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Bytes read at a time while looking for the end of the header section.
const CHUNK: usize = 16 * 1024;

/// The largest message in clear edited in its own file, its body read into memory on
/// the way (a lookup thread holds at most this much at a time).
const IN_PLACE_MAX: u64 = 256 * 1024;

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
    /// Opens an incoming message, whose first `len` octets are written and whose last
    /// sealed segment, if any, too: the plaintext and its length (`super::rewrite`).
    fn open_incoming(&self, msgid: u32, len: u64) -> io::Result<(File, u64)> {
        let f = super::spool::open_plain(&self.incoming(msgid))?;
        // A sealed message ends where the file does ([`Spool::finish_data`] cut it
        // there); a plain one at `len` (a reused file may hold more).
        let end = match super::seal::is_sealed(&f)? {
            true => f.metadata()?.len(),
            false => len,
        };
        super::seal::plaintext(self.key(), f, end)
    }

    /// A new message file at `path` (created or emptied), sealed when the spool has a
    /// key, its header written (`super::rewrite`).
    fn create_at(&self, path: &Path) -> io::Result<MessageFile> {
        let (mut m, header) = MessageFile::new(create_temporary(path)?, self.key())?;
        self.write_raw(&mut m, &header)?;
        Ok(m)
    }

    /// Applies end-of-message `edits` (and, with `junk`, `X-Spam: Yes`; with
    /// `masquerade`, that address in the From fields) to the first `len` bytes of
    /// incoming message `msgid` (whose last sealed segment, when it is sealed, is
    /// written); returns the new file, open for writing at its end, for the commit.
    pub fn edit_incoming(
        &self,
        msgid: u32,
        len: u64,
        edits: &[Edit],
        junk: bool,
        masquerade: Option<&str>,
    ) -> io::Result<MessageFile> {
        let path = self.incoming(msgid);
        let (old, len) = self.open_incoming(msgid, len)?;
        let (head, body_at) = header_section(&old, len)?;
        let mut head = apply(&head, edits, junk);
        if let Some(address) = masquerade {
            head = super::masquerade::masquerade(&head, address);
        }
        let body = match edits.iter().any(|e| matches!(e, Edit::ReplaceBody(_))) {
            true => 0,
            false => len - body_at,
        };
        if self.key().is_none() && len <= IN_PLACE_MAX {
            // The edited header section, then the body read after it: one buffer, one
            // write over the file.
            let mut whole = head;
            let at = whole.len();
            whole.resize(at + body as usize, 0);
            old.read_exact_at(&mut whole[at..], body_at)?;
            drop(old);
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            let (mut f, _) = MessageFile::new(file, None)?;
            let bytes = f.encode(&whole)?.into_owned();
            self.write_raw(&mut f, &bytes)?;
            // What the file held past the new end (a shorter header section, a
            // reused file's older message) is cut off, as a new file would not hold it.
            f.file.set_len(f.end())?;
            return Ok(f);
        }
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<MessageFile> {
            let mut f = self.create_at(&tmp)?;
            let sealed = f.encode(&head)?.into_owned();
            f.write_raw(&sealed)?;
            if body > 0 {
                f.copy_in(&old, body_at, body)?;
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
        spool.write_data(&mut f, data).unwrap();
        drop(f);
        let f = spool.edit_incoming(id, written, edits, junk, None).unwrap();
        let out = fs::read(spool.incoming(id)).unwrap();
        assert_eq!(f.end(), out.len() as u64, "the file is left at its end");
        assert!(!spool.incoming(id).with_extension("tmp").exists());
        out
    }

    /// The same through a sealed spool: the edited message, read back decrypted.
    fn edited_sealed(data: &[u8], edits: &[Edit], junk: bool) -> Vec<u8> {
        let dir = TempDir::new("rewrite-sealed");
        let key = crate::queue::seal::SpoolKey::new(&[3u8; 32]);
        let (spool, _) = Spool::open(&dir.0).unwrap();
        let spool = spool.with_key(key);
        let (id, mut f) = spool.create_message().unwrap();
        spool.write_data(&mut f, data).unwrap();
        spool.finish_data(&mut f).unwrap();
        drop(f);
        let mut f = spool
            .edit_incoming(id, data.len() as u64, edits, junk, None)
            .unwrap();
        spool.finish_data(&mut f).unwrap();
        let raw = fs::read(spool.incoming(id)).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"Subject"));
        let (mut plain, len) = spool.open_incoming(id, 0).unwrap();
        let mut out = Vec::new();
        plain.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, len);
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
                    assert!(edited_sealed(&msg, set, junk) == want, "sealed");
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
    fn a_small_message_keeps_its_file_and_a_large_one_gets_a_new_one() {
        use std::os::unix::fs::MetadataExt;
        let dir = TempDir::new("rewrite-inode");
        let (spool, _) = Spool::open(&dir.0).unwrap();
        let fill = IN_PLACE_MAX as usize - HEAD.len() - 1;
        for (body, same) in [(fill, true), (fill + 1, false)] {
            let msg = format!("{HEAD}\n{}", "b".repeat(body)).into_bytes();
            let (id, mut f) = spool.create_message().unwrap();
            spool.write_data(&mut f, &msg).unwrap();
            drop(f);
            let before = fs::metadata(spool.incoming(id)).unwrap().ino();
            let f = spool
                .edit_incoming(id, msg.len() as u64, &edits(), false, None)
                .unwrap();
            let after = fs::metadata(spool.incoming(id)).unwrap().ino();
            assert_eq!(before == after, same, "{} octets", msg.len());
            let out = fs::read(spool.incoming(id)).unwrap();
            assert_eq!(out, apply(&msg, &edits(), false));
            assert_eq!(f.end(), out.len() as u64);
        }
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
