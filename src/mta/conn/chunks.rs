//! The BDAT chunks of a BINARYMIME message (RFC 3030) on the wire: each piece read
//! from the spool is encoded ([`BinaryEncoder`]) and sent as one chunk, `BDAT n`
//! and its octets, the last one `BDAT n LAST` (`BDAT 0 LAST` for an empty message).

use super::*;

/// Octets of the spooled message read for one chunk.
const CHUNK: usize = 64 * 1024;

impl MtaConn {
    /// Adds chunks to the output while it is below the high-water mark and the client
    /// lets them go.
    pub(super) fn fill_chunks(&mut self) -> bool {
        let Some((id, mut pos)) = self.sending else {
            return false;
        };
        let Some(body) = self.bodies.get(&id) else {
            self.abort("the message is not open");
            return false;
        };
        self.chunk.resize(CHUNK, 0);
        let mut payload = Vec::with_capacity(CHUNK + CHUNK / 8);
        let mut progress = false;
        while self.out.len() < OUT_HIGH && self.client.may_send_chunk() {
            let want = (body.len - pos).min(CHUNK as u64) as usize;
            let n = match body.file.read_at(&mut self.chunk[..want], pos) {
                Ok(0) if want > 0 => {
                    self.abort("reading the message: file shorter than its length");
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.abort(&format!("reading the message: {e}"));
                    return false;
                }
            };
            pos += n as u64;
            let last = pos == body.len;
            payload.clear();
            self.binary.push(&self.chunk[..n], &mut payload);
            let cmd = format!("BDAT {}{}", payload.len(), if last { " LAST" } else { "" });
            log::trace!("{:016x} mta >>> {cmd}", self.session);
            self.out.extend_from_slice(cmd.as_bytes());
            self.out.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&payload);
            self.client.chunk_sent(last);
            progress = true;
            if last {
                self.sending = None;
                return true;
            }
        }
        self.sending = Some((id, pos));
        progress
    }
}
