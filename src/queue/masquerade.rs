//! `senders <table> masquerade`: the From header of an authenticated user's message
//! shows the sender the session allowed, as OpenSMTPD does.
//!
//! Every mailbox of every From field gets the address: the part in angle brackets
//! when there is one (`Bob <bob@example.org>`), else the address itself, its comments
//! kept (`bob@example.org (Bob)`). A field with group syntax, or that does not parse
//! (an open quote, comment or bracket), is left as it is. The field is unfolded.

/// The header section `head` (LF line ends) with its From fields rewritten to show
/// `address`.
pub fn masquerade(head: &[u8], address: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 64);
    let mut i = 0;
    while i < head.len() {
        let end = field_end(head, i);
        let field = &head[i..end];
        match rewrite_field(field, address) {
            Some(f) => out.extend_from_slice(&f),
            None => out.extend_from_slice(field),
        }
        i = end;
    }
    out
}

/// The end of the field starting at `start`: after its last continuation line.
fn field_end(head: &[u8], start: usize) -> usize {
    let mut end = start;
    loop {
        end = match memchr::memchr(b'\n', &head[end..]) {
            Some(n) => end + n + 1,
            None => return head.len(),
        };
        if end == start + 1 || !matches!(head.get(end), Some(b' ' | b'\t')) {
            return end;
        }
    }
}

/// The From field `field` rewritten, or `None` when it is another field or is left as
/// it is.
fn rewrite_field(field: &[u8], address: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(field).ok()?;
    let (name, value) = text.split_once(':')?;
    if !name.eq_ignore_ascii_case("From") {
        return None;
    }
    // Unfolded: the line breaks of continuation lines go.
    let value: String = value.trim_end_matches('\n').replace('\n', "");
    let mut parts = Vec::new();
    for mailbox in split_list(&value)? {
        parts.push(rewrite_mailbox(mailbox, address)?);
    }
    Some(format!("{name}:{}\n", parts.join(",")).into_bytes())
}

/// Lexical state of a header value: quoted string, comment depth, angle brackets.
#[derive(Default)]
struct Lex {
    quote: bool,
    comment: usize,
    angle: bool,
    escape: bool,
}

impl Lex {
    /// Takes `c`; true when it is outside quotes and comments (a structural character).
    fn step(&mut self, c: char) -> bool {
        if self.escape {
            self.escape = false;
            return false;
        }
        match c {
            '\\' if self.quote || self.comment > 0 => self.escape = true,
            '"' if self.comment == 0 => {
                self.quote = !self.quote;
                return false;
            }
            '(' if !self.quote => {
                self.comment += 1;
                return false;
            }
            ')' if !self.quote && self.comment > 0 => {
                self.comment -= 1;
                return false;
            }
            _ => {}
        }
        !self.quote && self.comment == 0
    }

    fn balanced(&self) -> bool {
        !self.quote && self.comment == 0 && !self.angle && !self.escape
    }
}

/// The mailboxes of a list, split at the commas outside quotes, comments and angle
/// brackets; `None` for group syntax or a value that does not parse.
fn split_list(value: &str) -> Option<Vec<&str>> {
    let mut lex = Lex::default();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if !lex.step(c) {
            continue;
        }
        match c {
            '<' if !lex.angle => lex.angle = true,
            '>' if lex.angle => lex.angle = false,
            ':' | ';' => return None,
            ',' if !lex.angle => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !lex.balanced() {
        return None;
    }
    out.push(&value[start..]);
    Some(out)
}

/// One mailbox with `address` in place of its own.
fn rewrite_mailbox(mailbox: &str, address: &str) -> Option<String> {
    let mut lex = Lex::default();
    let (mut open, mut close) = (None, None);
    // The words outside comments (a quoted string is part of its word), for an
    // address without brackets: their span, and how many there are.
    let (mut first, mut last, mut words, mut in_word) = (None, None, 0, false);
    for (i, c) in mailbox.char_indices() {
        let bare = lex.step(c);
        if bare && c == '<' && open.is_none() {
            open = Some(i);
        } else if bare && c == '>' && open.is_some() && close.is_none() {
            close = Some(i);
        }
        let word = (bare && !c.is_whitespace()) || lex.quote || c == '"';
        if word {
            first.get_or_insert(i);
            last = Some(i + c.len_utf8());
            words += usize::from(!in_word);
        }
        in_word = word;
    }
    if let (Some(o), Some(c)) = (open, close) {
        return Some(format!("{}{address}{}", &mailbox[..=o], &mailbox[c..]));
    }
    // A bare address is one word: anything else (a display name without brackets)
    // does not parse.
    if words != 1 {
        return None;
    }
    let (f, l) = (first?, last?);
    Some(format!("{}{address}{}", &mailbox[..f], &mailbox[l..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(head: &str) -> String {
        String::from_utf8(masquerade(head.as_bytes(), "bob@example.org")).unwrap()
    }

    #[test]
    fn from_fields_show_the_sender() {
        assert_eq!(
            m("Received: from x\n\tby y\nFrom: Bob Builder <builder@other.example>\nTo: a@b\n"),
            "Received: from x\n\tby y\nFrom: Bob Builder <bob@example.org>\nTo: a@b\n"
        );
        assert_eq!(m("from: x@y.z\n"), "from: bob@example.org\n");
        assert_eq!(
            m("From: x@y.z (The Boss)\n"),
            "From: bob@example.org (The Boss)\n"
        );
        assert_eq!(
            m("From: \"Doe, John\" <j@d.e>,\n a@b.c\n"),
            "From: \"Doe, John\" <bob@example.org>, bob@example.org\n"
        );
        assert_eq!(m("From: (c) \"x y\"@q.r\n"), "From: (c) bob@example.org\n");
    }

    #[test]
    fn what_does_not_parse_is_left_alone() {
        for head in [
            "From: friends: a@b.c, d@e.f;\n",
            "From: \"open <a@b.c>\n",
            "From: (open a@b.c\n",
            "From: <a@b.c\n",
            "From: Bob Builder\n",
            "From:\n",
            "Sender: a@b.c\n",
            "X-From: a@b.c\n",
        ] {
            assert_eq!(m(head), head);
        }
    }
}
