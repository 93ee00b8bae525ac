//! The output buffer of a session once everything in it is written.

/// Capacity an emptied output buffer keeps. Pipelined commands can make it grow up to
/// the high-water mark and one batch of replies more; that much is given back once it
/// is written, so that a session idle after a burst holds little.
pub(super) const OUT_KEEP: usize = 4 * 1024;

/// Empties a fully written output buffer, giving back the capacity above [`OUT_KEEP`].
pub(super) fn reset(out: &mut Vec<u8>) {
    out.clear();
    if out.capacity() > OUT_KEEP {
        out.shrink_to(OUT_KEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_given_back_a_small_buffer_kept() {
        let mut out = Vec::new();
        out.extend_from_slice(&[b'x'; 100]);
        reset(&mut out);
        assert!(out.is_empty());
        let small = out.capacity();
        assert!((100..=OUT_KEEP).contains(&small));
        out.extend_from_slice(&vec![b'2'; 200 * 1024]);
        assert!(out.capacity() >= 200 * 1024);
        reset(&mut out);
        assert!(out.is_empty());
        assert!(out.capacity() <= OUT_KEEP, "kept {}", out.capacity());
    }
}
