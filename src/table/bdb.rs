//! Reading the Berkeley DB files makemap(8) writes (`db:` tables): OpenSMTPD's makemap
//! stores each line as a key and a value, both NUL-terminated, in a hash database
//! (`-d btree` for a B-tree one) of Berkeley DB 5 (Debian's libdb5.3).
//!
//! Every page of the file is read in order, and the key/data pairs of the hash pages
//! (types 2 and 13) or B-tree leaf pages (type 5) taken, with values that did not fit
//! a page followed through their overflow pages (type 7). No hash function is needed:
//! the table is read whole, as a `file:` table is. A file with page checksums,
//! encryption or duplicate keys (which makemap does not make) is refused with its
//! reason. Pure: bytes in, pairs out; every offset is checked against the page.

/// The magic number of a hash database (meta page, offset 12).
const HASH_MAGIC: u32 = 0x0006_1561;
/// The magic number of a B-tree database.
const BTREE_MAGIC: u32 = 0x0005_3162;
/// The size of a page header; the item index follows it.
const HEADER: usize = 26;
/// Page types.
const P_HASH_UNSORTED: u8 = 2;
const P_LBTREE: u8 = 5;
const P_OVERFLOW: u8 = 7;
const P_HASH: u8 = 13;
/// Item types: on the page, and on overflow pages.
const KEYDATA: u8 = 1;
const OFFPAGE: u8 = 3;

struct Db<'a> {
    bytes: &'a [u8],
    psize: usize,
    big_endian: bool,
}

impl<'a> Db<'a> {
    fn u16(&self, b: &[u8], at: usize) -> Option<usize> {
        let a: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(usize::from(match self.big_endian {
            true => u16::from_be_bytes(a),
            false => u16::from_le_bytes(a),
        }))
    }

    fn u32(&self, b: &[u8], at: usize) -> Option<u32> {
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(match self.big_endian {
            true => u32::from_be_bytes(a),
            false => u32::from_le_bytes(a),
        })
    }

    fn pages(&self) -> usize {
        self.bytes.len() / self.psize
    }

    fn page(&self, n: usize) -> Option<&'a [u8]> {
        self.bytes.get(n * self.psize..(n + 1) * self.psize)
    }

    /// The bytes of the item at index `i` of a hash or B-tree leaf page.
    fn item(&self, page: &'a [u8], i: usize, hash: bool) -> Result<Vec<u8>, String> {
        let bad = || format!("page item {i} out of bounds");
        let entries = self.u16(page, 20).ok_or_else(bad)?;
        let off = self.u16(page, HEADER + 2 * i).ok_or_else(bad)?;
        if off < HEADER + 2 * entries || off >= self.psize {
            return Err(bad());
        }
        let (kind, data) = if hash {
            // An item ends where the one before it in the index starts.
            let end = match i {
                0 => self.psize,
                _ => self.u16(page, HEADER + 2 * (i - 1)).ok_or_else(bad)?,
            };
            if end <= off || end > self.psize {
                return Err(bad());
            }
            (page[off], &page[off + 1..end])
        } else {
            let len = self.u16(page, off).ok_or_else(bad)?;
            let kind = *page.get(off + 2).ok_or_else(bad)? & 0x7f;
            let data = match kind {
                KEYDATA => page.get(off + 3..off + 3 + len).ok_or_else(bad)?,
                _ => &page[off..],
            };
            (kind, data)
        };
        match kind {
            KEYDATA => Ok(data.to_vec()),
            OFFPAGE => {
                // Overflow reference: type, 3 unused bytes, first page, total length
                // (from the item's start: the hash form has no length field before).
                let at = if hash { 3 } else { 4 };
                let pgno = self.u32(data, at).ok_or_else(bad)?;
                let tlen = self.u32(data, at + 4).ok_or_else(bad)?;
                self.overflow(pgno as usize, tlen as usize)
            }
            k => Err(format!(
                "item of type {k} (duplicates or blobs, which makemap does not make)"
            )),
        }
    }

    /// A value spread over a chain of overflow pages.
    fn overflow(&self, mut pgno: usize, tlen: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(tlen.min(self.bytes.len()));
        // Each page of the file at most once: a chain that loops ends here.
        for _ in 0..self.pages() {
            let page = self
                .page(pgno)
                .filter(|p| p[25] == P_OVERFLOW)
                .ok_or_else(|| format!("overflow page {pgno} missing"))?;
            let n = self.u16(page, 22).unwrap_or(0);
            let data = page
                .get(HEADER..HEADER + n)
                .ok_or_else(|| format!("overflow page {pgno} too full"))?;
            out.extend_from_slice(data);
            if out.len() >= tlen {
                out.truncate(tlen);
                return Ok(out);
            }
            pgno = self.u32(page, 16).unwrap_or(0) as usize;
            if pgno == 0 {
                break;
            }
        }
        Err("overflow chain shorter than its item".into())
    }
}

/// A string of a makemap item: its bytes without the NUL that ends them.
fn text(mut b: Vec<u8>) -> String {
    if b.last() == Some(&0) {
        b.pop();
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The key/value pairs of a Berkeley DB hash or B-tree file, in the file's order.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let word = |at: usize, be: bool| {
        let a: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    };
    let kind = |m: u32| [HASH_MAGIC, BTREE_MAGIC].contains(&m);
    let (big_endian, magic) = match (word(12, false), word(12, true)) {
        (Some(m), _) if kind(m) => (false, m),
        (_, Some(m)) if kind(m) => (true, m),
        _ => return Err("not a Berkeley DB hash or btree file, which makemap makes".into()),
    };
    let psize = word(20, big_endian).unwrap_or(0) as usize;
    if !(512..=65536).contains(&psize) || !psize.is_power_of_two() || bytes.len() < psize {
        return Err(format!("impossible page size {psize}"));
    }
    // Meta page: byte 24 the encryption algorithm, 26 the flags (1: checksums).
    if bytes[24] != 0 {
        return Err("encrypted database".into());
    }
    if bytes[26] & 1 != 0 {
        return Err("database with page checksums (make it again with makemap)".into());
    }
    let db = Db {
        bytes,
        psize,
        big_endian,
    };
    let hash = magic == HASH_MAGIC;
    let mut pairs = Vec::new();
    for n in 1..db.pages() {
        let Some(page) = db.page(n) else { break };
        let leaf = match page[25] {
            P_HASH | P_HASH_UNSORTED => hash,
            P_LBTREE => !hash,
            _ => false,
        };
        if !leaf {
            continue;
        }
        let entries = db.u16(page, 20).unwrap_or(0);
        if HEADER + 2 * entries > psize {
            return Err(format!("page {n}: {entries} entries do not fit"));
        }
        for i in (0..entries.saturating_sub(1)).step_by(2) {
            // A B-tree marks a deleted pair on its data item.
            if !hash {
                let off = db.u16(page, HEADER + 2 * (i + 1)).unwrap_or(0);
                if page.get(off + 2).is_some_and(|t| t & 0x80 != 0) {
                    continue;
                }
            }
            let key = db
                .item(page, i, hash)
                .map_err(|e| format!("page {n}: {e}"))?;
            let value = db
                .item(page, i + 1, hash)
                .map_err(|e| format!("page {n}: {e}"))?;
            pairs.push((text(key), text(value)));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSIZE: usize = 512;

    fn page(kind: u8, entries: usize, next: u32, hf: usize) -> Vec<u8> {
        let mut p = vec![0u8; PSIZE];
        p[16..20].copy_from_slice(&next.to_le_bytes());
        p[20..22].copy_from_slice(&(entries as u16).to_le_bytes());
        p[22..24].copy_from_slice(&(hf as u16).to_le_bytes());
        p[25] = kind;
        p
    }

    /// Puts items on a page from its end down, indexing each.
    fn place_items(p: &mut [u8], items: &[Vec<u8>]) {
        let mut end = PSIZE;
        for (i, it) in items.iter().enumerate() {
            let off = end - it.len();
            p[off..end].copy_from_slice(it);
            p[HEADER + 2 * i..HEADER + 2 * i + 2].copy_from_slice(&(off as u16).to_le_bytes());
            end = off;
        }
    }

    fn keydata(s: &str) -> Vec<u8> {
        let mut v = vec![KEYDATA];
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        v
    }

    fn meta(magic: u32, pages: usize) -> Vec<u8> {
        let mut m = vec![0u8; PSIZE];
        m[12..16].copy_from_slice(&magic.to_le_bytes());
        m[16..20].copy_from_slice(&9u32.to_le_bytes());
        m[20..24].copy_from_slice(&(PSIZE as u32).to_le_bytes());
        m[25] = 8;
        m[32..36].copy_from_slice(&(pages as u32 - 1).to_le_bytes());
        m
    }

    #[test]
    fn a_hash_file_with_an_overflow_value() {
        let long = "x".repeat(700);
        let mut off = vec![OFFPAGE, 0, 0, 0];
        off.extend_from_slice(&2u32.to_le_bytes());
        off.extend_from_slice(&(long.len() as u32 + 1).to_le_bytes());
        let mut p1 = page(P_HASH, 4, 0, 0);
        place_items(
            &mut p1,
            &[keydata("root"), keydata("alice, bob"), keydata("big"), off],
        );
        let mut bytes = meta(HASH_MAGIC, 4);
        bytes.extend_from_slice(&p1);
        let mut data = long.clone().into_bytes();
        data.push(0);
        let first = PSIZE - HEADER;
        let mut o1 = page(P_OVERFLOW, 1, 3, first);
        o1[HEADER..].copy_from_slice(&data[..first]);
        let mut o2 = page(P_OVERFLOW, 1, 0, data.len() - first);
        o2[HEADER..HEADER + data.len() - first].copy_from_slice(&data[first..]);
        bytes.extend_from_slice(&o1);
        bytes.extend_from_slice(&o2);
        assert_eq!(
            read(&bytes),
            Ok(vec![
                ("root".into(), "alice, bob".into()),
                ("big".into(), long)
            ])
        );
        // A chain that loops back on itself, for a length it never reaches, ends.
        let mut looped = bytes.clone();
        let item = PSIZE
            + usize::from(u16::from_le_bytes([
                bytes[PSIZE + HEADER + 6],
                bytes[PSIZE + HEADER + 7],
            ]));
        looped[item + 8..item + 12].copy_from_slice(&5000u32.to_le_bytes());
        looped[3 * PSIZE + 16..3 * PSIZE + 20].copy_from_slice(&2u32.to_le_bytes());
        assert!(read(&looped).is_err_and(|e| e.contains("overflow")));
        // Checksums, another format, a bad offset: refused.
        let mut sums = bytes.clone();
        sums[26] = 1;
        assert!(read(&sums).is_err_and(|e| e.contains("checksums")));
        assert!(read(b"plain text, not a database").is_err());
        let mut bad = bytes.clone();
        bad[PSIZE + HEADER..PSIZE + HEADER + 2].copy_from_slice(&10u16.to_le_bytes());
        assert!(read(&bad).is_err());
    }

    #[test]
    fn a_btree_leaf() {
        let mut p = page(P_LBTREE, 4, 0, 0);
        let items: Vec<Vec<u8>> = ["a.example\0", "<set>\0", "gone\0", "x\0"]
            .iter()
            .map(|s| {
                let mut v = (s.len() as u16).to_le_bytes().to_vec();
                v.push(KEYDATA);
                v.extend_from_slice(s.as_bytes());
                v
            })
            .collect();
        place_items(&mut p, &items);
        // The second pair is deleted.
        let off = usize::from(u16::from_le_bytes([p[HEADER + 6], p[HEADER + 7]]));
        p[off + 2] |= 0x80;
        let mut bytes = meta(BTREE_MAGIC, 2);
        bytes.extend_from_slice(&p);
        assert_eq!(read(&bytes), Ok(vec![("a.example".into(), "<set>".into())]));
    }
}
