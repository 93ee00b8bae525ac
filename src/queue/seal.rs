//! `queue encryption`: message files sealed with AES-256-GCM in the spool.
//!
//! ```text
//! "\0SMTPDQE" VERSION(1) SALT(32)  SEGMENT...  (then the envelopes and trailer, in clear)
//! ```
//! Each message file has a key of its own, derived with HKDF-SHA256 from the
//! configured key and the file's random salt. The message is cut into segments of
//! 64 KiB, each sealed with its own nonce (its index, and a flag on the last one, as in
//! the STREAM construction), so that it is written as it arrives and read back without
//! holding it whole, and so that a segment cannot be moved, dropped or cut off without
//! the reading failing. What reads a message gets its plaintext in a file in memory
//! (memfd_create(2)): it never reaches the disk. The envelopes stay in clear, as the
//! queue manager and `smtpctl show queue` read them.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// What a sealed message file starts with (no stored message starts with a NUL).
const MAGIC: &[u8; 8] = b"\0SMTPDQE";
/// The format's version.
const VERSION: u8 = 1;
/// Octets of the random salt.
const SALT_LEN: usize = 32;
/// Octets before the first segment.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + SALT_LEN;
/// Plaintext octets of a segment (the last one may hold fewer, even none).
pub const SEGMENT: usize = 64 * 1024;
/// Octets of a segment's authentication tag.
const TAG_LEN: usize = 16;
/// The HKDF context of message keys.
const INFO: &[u8] = b"smtpd queue message v1";

/// The key of `queue encryption`, wiped when dropped.
pub struct SpoolKey([u8; 32]);

impl SpoolKey {
    /// The key from its 32 octets, as given in smtpd.conf or read at start.
    pub fn new(key: &[u8]) -> Option<SpoolKey> {
        Some(SpoolKey(key.try_into().ok()?))
    }
}

/// The key `queue encryption` names: given in the file, the first line of the standard
/// input, or asked on the terminal. Read when the daemon starts, before it leaves its
/// terminal.
pub fn load_key(from: &crate::config::QueueKey) -> Result<SpoolKey, String> {
    use crate::config::QueueKey;
    let text = match from {
        QueueKey::Given(k) => k.clone(),
        QueueKey::Stdin => {
            let mut line = String::new();
            io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("queue encryption: cannot read the key from stdin: {e}"))?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        QueueKey::Prompt => crate::sys::read_secret("queue key: ").map_err(|e| {
            format!(
                "queue encryption: no key in the configuration and none can be asked on a \
                 terminal ({e}): give the key, or 'stdin'"
            )
        })?,
    };
    crate::config::check_queue_key(&text)?;
    SpoolKey::new(text.as_bytes()).ok_or_else(|| "queue encryption: bad key".to_string())
}

impl Drop for SpoolKey {
    fn drop(&mut self) {
        self.0 = [0; 32];
        // Keeps the wipe from being removed as a store nothing reads.
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(..)")
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The key of the file whose salt is `salt`.
fn file_key(master: &SpoolKey, salt: &[u8]) -> io::Result<LessSafeKey> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&master.0);
    let okm = prk
        .expand(&[INFO], &AES_256_GCM)
        .map_err(|_| invalid("queue encryption: key derivation failed"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// The nonce of segment `i`: its index, and whether it is the last.
fn nonce(i: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = u8::from(last);
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals a message as it is written.
struct Sealer {
    key: LessSafeKey,
    /// The index of the next segment.
    next: u64,
    /// Plaintext not sealed yet.
    buf: Vec<u8>,
}

impl Sealer {
    /// A sealer for a new file, and the header that starts it.
    fn new(master: &SpoolKey) -> io::Result<(Sealer, Vec<u8>)> {
        let mut salt = [0u8; SALT_LEN];
        crate::sys::random_bytes(&mut salt);
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&salt);
        let sealer = Sealer {
            key: file_key(master, &salt)?,
            next: 0,
            buf: Vec::with_capacity(2 * SEGMENT),
        };
        Ok((sealer, header))
    }

    fn seal(&mut self, mut seg: Vec<u8>, last: bool, out: &mut Vec<u8>) -> io::Result<()> {
        self.key
            .seal_in_place_append_tag(nonce(self.next, last), Aad::empty(), &mut seg)
            .map_err(|_| invalid("queue encryption: sealing failed"))?;
        self.next += 1;
        out.extend_from_slice(&seg);
        Ok(())
    }

    /// Takes `data`; returns the segments it completed, sealed. A full segment is kept
    /// until more comes, so that the last one is never sealed as another.
    fn push(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while self.buf.len() > SEGMENT {
            let seg: Vec<u8> = self.buf.drain(..SEGMENT).collect();
            self.seal(seg, false, &mut out)?;
        }
        Ok(out)
    }

    /// The last segment, sealed.
    fn finish(mut self) -> io::Result<Vec<u8>> {
        let seg = std::mem::take(&mut self.buf);
        let mut out = Vec::with_capacity(seg.len() + TAG_LEN);
        self.seal(seg, true, &mut out)?;
        Ok(out)
    }
}

/// A message file being written: plain, or sealed when the spool has a key.
pub struct MessageFile {
    /// The file.
    pub(super) file: File,
    /// Where the next octets go.
    pos: u64,
    /// The sealer, until the last segment is written (boxed: a key schedule is large).
    sealer: Option<Box<Sealer>>,
    /// Plaintext octets taken.
    plain_len: u64,
}

impl MessageFile {
    /// A new message file on `file` (empty, or a reused one written over from its
    /// start), sealed with `key` when there is one; the header is still to be written
    /// (see [`MessageFile::take_pending`]).
    pub(super) fn new(file: File, key: Option<&SpoolKey>) -> io::Result<(MessageFile, Vec<u8>)> {
        let (sealer, header) = match key {
            Some(k) => {
                let (s, h) = Sealer::new(k)?;
                (Some(Box::new(s)), h)
            }
            None => (None, Vec::new()),
        };
        let m = MessageFile {
            file,
            pos: 0,
            sealer,
            plain_len: 0,
        };
        Ok((m, header))
    }

    /// The octets to write for `data`: itself, or the segments it completed.
    pub(super) fn encode(&mut self, data: &[u8]) -> io::Result<std::borrow::Cow<'_, [u8]>> {
        self.plain_len += data.len() as u64;
        match self.sealer.as_mut() {
            Some(s) => Ok(s.push(data)?.into()),
            None => Ok(std::borrow::Cow::Owned(data.to_vec())),
        }
    }

    /// The octets that end the message: the last segment, once.
    pub(super) fn finish(&mut self) -> io::Result<Vec<u8>> {
        match self.sealer.take() {
            Some(s) => s.finish(),
            None => Ok(Vec::new()),
        }
    }

    /// Writes `bytes` at the file's end as written so far (the same octets again, at
    /// the same place, when it is retried after a failure).
    pub(super) fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.pos)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// The offset where the message ends in the file (the envelopes follow).
    pub(super) fn end(&self) -> u64 {
        self.pos
    }

    /// Plaintext octets written.
    pub fn len(&self) -> u64 {
        self.plain_len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.plain_len == 0
    }

    /// Whether the message is sealed and still open (its last segment to come).
    pub(super) fn open_seal(&self) -> bool {
        self.sealer.is_some()
    }

    /// Appends the `n` octets of `src` from its offset `at`. A plain file gets them
    /// from the kernel (copy_file_range(2) where it can: they never pass through this
    /// process); a sealed one a segment at a time.
    pub(super) fn copy_in(&mut self, src: &File, at: u64, n: u64) -> io::Result<()> {
        if self.sealer.is_none() {
            (&*src).seek(SeekFrom::Start(at))?;
            self.file.seek(SeekFrom::Start(self.pos))?;
            let copied = io::copy(&mut io::Read::take(src, n), &mut self.file)?;
            if copied != n {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.pos += n;
            self.plain_len += n;
            return Ok(());
        }
        let mut buf = vec![0u8; SEGMENT];
        let mut done = 0u64;
        while done < n {
            let k = (n - done).min(SEGMENT as u64) as usize;
            src.read_exact_at(&mut buf[..k], at + done)?;
            let sealed = self.encode(&buf[..k])?.into_owned();
            self.write_raw(&sealed)?;
            done += k as u64;
        }
        Ok(())
    }
}

impl std::fmt::Debug for MessageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageFile")
            .field("pos", &self.pos)
            .field("sealed", &self.sealer.is_some())
            .finish()
    }
}

/// Whether `f` is a sealed message file.
pub(super) fn is_sealed(f: &File) -> io::Result<bool> {
    let mut m = [0u8; MAGIC.len()];
    match f.read_exact_at(&mut m, 0) {
        Ok(()) => Ok(&m == MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Decrypts the first `len` octets of `f`, a sealed message file, into `out`;
/// returns the plaintext's length.
fn unseal(master: &SpoolKey, f: &File, len: u64, out: &mut impl Write) -> io::Result<u64> {
    let mut header = [0u8; HEADER_LEN];
    if len < (HEADER_LEN + TAG_LEN) as u64 {
        return Err(invalid("sealed message: too short"));
    }
    f.read_exact_at(&mut header, 0)?;
    if header[MAGIC.len()] != VERSION {
        return Err(invalid("sealed message: unknown version"));
    }
    let key = file_key(master, &header[MAGIC.len() + 1..])?;
    let mut buf = vec![0u8; SEGMENT + TAG_LEN];
    let mut pos = HEADER_LEN as u64;
    let mut total = 0u64;
    let mut i = 0u64;
    while pos < len {
        let n = (len - pos).min((SEGMENT + TAG_LEN) as u64) as usize;
        if n < TAG_LEN {
            return Err(invalid("sealed message: truncated"));
        }
        let seg = &mut buf[..n];
        f.read_exact_at(seg, pos)?;
        let last = pos + n as u64 == len;
        let plain = key
            .open_in_place(nonce(i, last), Aad::empty(), seg)
            .map_err(|_| invalid("sealed message: wrong key, or altered"))?;
        out.write_all(plain)?;
        total += plain.len() as u64;
        pos += n as u64;
        i += 1;
    }
    Ok(total)
}

/// The plaintext of the message in the first `len` octets of `f`: `f` itself when it
/// is not sealed (a message queued before encryption was turned on), else a file in
/// memory, at its start, with the decrypted message. A sealed file without a key is
/// an error.
pub(super) fn plaintext(key: Option<&SpoolKey>, f: File, len: u64) -> io::Result<(File, u64)> {
    if !is_sealed(&f)? {
        return Ok((f, len));
    }
    let Some(key) = key else {
        return Err(invalid(
            "the message is encrypted and no 'queue encryption' key is configured",
        ));
    };
    let mut mem = crate::sys::memfd(c"smtpd-message")?;
    let n = {
        let mut w = io::BufWriter::with_capacity(SEGMENT, &mut mem);
        let n = unseal(key, &f, len, &mut w)?;
        w.flush()?;
        n
    };
    mem.seek(SeekFrom::Start(0))?;
    Ok((mem, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sealed(key: &SpoolKey, chunks: &[&[u8]]) -> (File, u64) {
        let tmp = crate::sys::memfd(c"t").unwrap();
        let (mut m, header) = MessageFile::new(tmp, Some(key)).unwrap();
        m.write_raw(&header).unwrap();
        for c in chunks {
            let b = m.encode(c).unwrap().into_owned();
            m.write_raw(&b).unwrap();
        }
        let last = m.finish().unwrap();
        m.write_raw(&last).unwrap();
        let end = m.end();
        (m.file, end)
    }

    fn read_back(key: Option<&SpoolKey>, f: File, len: u64) -> io::Result<Vec<u8>> {
        let (mut p, n) = plaintext(key, f, len)?;
        let mut v = Vec::new();
        p.read_to_end(&mut v)?;
        assert_eq!(v.len() as u64, n);
        Ok(v)
    }

    #[test]
    fn round_trips_at_every_size() {
        let key = SpoolKey::new(&[7u8; 32]).unwrap();
        let data: Vec<u8> = (0..3 * SEGMENT + 17).map(|i| (i % 251) as u8).collect();
        for size in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            2 * SEGMENT,
            data.len(),
        ] {
            let whole = &data[..size];
            // Written in pieces of odd sizes.
            let pieces: Vec<&[u8]> = whole.chunks(40_000).collect();
            let (f, len) = sealed(&key, &pieces);
            let raw = {
                let mut v = vec![0u8; len as usize];
                f.read_exact_at(&mut v, 0).unwrap();
                v
            };
            assert!(raw.starts_with(MAGIC));
            if size > 64 {
                assert!(!raw.windows(64).any(|w| w == &whole[..64]));
            }
            assert_eq!(read_back(Some(&key), f, len).unwrap(), whole, "{size}");
        }
    }

    #[test]
    fn tampering_and_wrong_keys_fail() {
        let key = SpoolKey::new(&[7u8; 32]).unwrap();
        let data = vec![b'x'; 2 * SEGMENT + 10];
        let (f, len) = sealed(&key, &[&data]);
        let other = SpoolKey::new(&[8u8; 32]).unwrap();
        let dup = |f: &File| f.try_clone().unwrap();
        assert!(read_back(Some(&other), dup(&f), len).is_err());
        assert!(read_back(None, dup(&f), len).is_err());
        // Cut at a segment boundary: the new last segment was not sealed as the last.
        let cut = (HEADER_LEN + SEGMENT + TAG_LEN) as u64;
        assert!(read_back(Some(&key), dup(&f), cut).is_err());
        // One flipped bit.
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 100).unwrap();
        f.write_all_at(&[b[0] ^ 1], 100).unwrap();
        assert!(read_back(Some(&key), dup(&f), len).is_err());
        // A file that is not sealed is read as it is.
        let plain = crate::sys::memfd(c"p").unwrap();
        plain.write_all_at(b"Received: x\n\nbody\n", 0).unwrap();
        assert_eq!(
            read_back(Some(&key), plain, 18).unwrap(),
            b"Received: x\n\nbody\n"
        );
        assert!(SpoolKey::new(&[1u8; 31]).is_none());
    }

    #[test]
    fn a_sealed_spool_commits_and_reads_back() {
        use crate::queue::commit::commit_batch;
        use crate::queue::spool::tests::env;
        use crate::queue::spool::Spool;
        let tmp = crate::testutil::TempDir::new("seal-spool");
        let (spool, _) = Spool::open(&tmp.0).unwrap();
        let spool = spool.with_key(SpoolKey::new(&[9u8; 32]));
        let body = "Subject: secret\n\nthe plaintext\n".repeat(5000);
        let (id, mut f) = spool.create_message().unwrap();
        spool.write_data(&mut f, body.as_bytes()).unwrap();
        let job = spool.prepare_commit(id, f, &[env(id, 1, "a@b")]).unwrap();
        assert!(commit_batch(vec![((0, 0), job)], None, false)[0]
            .result
            .is_ok());
        let raw = std::fs::read(spool.message_path(id)).unwrap();
        assert!(!raw.windows(9).any(|w| w == b"plaintext"));
        // The envelopes stay readable; the message comes back whole.
        assert_eq!(spool.load_envelopes(id).unwrap(), vec![env(id, 1, "a@b")]);
        let (mut m, len) = spool.open_message(id).unwrap();
        let mut text = String::new();
        m.read_to_string(&mut text).unwrap();
        assert_eq!((text.len() as u64, text), (len, body.clone()));
        // Without the key, it cannot be read.
        let keyless = Spool::at(&tmp.0);
        assert!(keyless.open_message(id).is_err());
    }
}
