//! smtpd.conf tokens: words, quoted strings and punctuation, with line numbers.
//!
//! `#` starts a comment, a `\` before the newline continues the line, `$name` expands a
//! macro outside quotes. Strings are quoted with double or single quotes. Errors carry
//! the file and line.

use super::ConfigError;
use std::collections::HashMap;
use std::path::Path;

/// One token of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An unquoted word or a quoted string.
    Word {
        /// The text, quotes removed.
        text: String,
        /// It was written in double quotes.
        quoted: bool,
    },
    /// One of `{ } , = < > !`.
    Punct(char),
    /// The end of a statement.
    Newline,
}

/// A token and where it stands.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// The file it comes from.
    pub file: std::rc::Rc<str>,
    /// Its 1-based line.
    pub line: usize,
}

fn is_punct(c: char) -> bool {
    matches!(c, '{' | '}' | ',' | '=' | '<' | '>' | '!')
}

/// Splits `src` (read from `file`) into tokens. `$name` words are kept for
/// [`expand`], which runs per statement so that a macro is usable after its definition.
pub fn lex(src: &str, file: &Path) -> Result<Vec<Token>, ConfigError> {
    let file: std::rc::Rc<str> = file.display().to_string().into();
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = src.chars().peekable();
    let err = |line: usize, msg: String| ConfigError::at(&file, line, msg);
    // Inline tables and filter lists may span lines: newlines inside braces are ignored.
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                if depth == 0 {
                    out.push(Token {
                        tok: Tok::Newline,
                        file: file.clone(),
                        line,
                    });
                }
                line += 1;
            }
            ' ' | '\t' | '\r' => {}
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
                line += 1;
            }
            q @ ('"' | '\'') => {
                let start = line;
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => {
                            return Err(err(start, "unterminated quoted string".into()))
                        }
                        Some('\\') => match chars.next() {
                            Some(c) if c == q => text.push(q),
                            Some('\\') => text.push('\\'),
                            Some('\n') => line += 1,
                            Some(o) => {
                                text.push('\\');
                                text.push(o);
                            }
                            None => return Err(err(start, "unterminated quoted string".into())),
                        },
                        Some(c) if c == q => break,
                        Some(o) => text.push(o),
                    }
                }
                out.push(Token {
                    tok: Tok::Word { text, quoted: true },
                    file: file.clone(),
                    line,
                });
            }
            c if is_punct(c) => {
                // `=>` is another way to write `=` in a table entry.
                if c == '=' && chars.peek() == Some(&'>') {
                    chars.next();
                }
                match c {
                    '{' => depth += 1,
                    '}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                out.push(Token {
                    tok: Tok::Punct(c),
                    file: file.clone(),
                    line,
                });
            }
            c => {
                let mut text = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || is_punct(n) || n == '"' || n == '\'' || n == '#' {
                        break;
                    }
                    text.push(n);
                    chars.next();
                }
                out.push(Token {
                    tok: Tok::Word {
                        text,
                        quoted: false,
                    },
                    file: file.clone(),
                    line,
                });
            }
        }
    }
    if depth > 0 {
        return Err(err(line, "unbalanced '{'".into()));
    }
    out.push(Token {
        tok: Tok::Newline,
        file,
        line,
    });
    Ok(out)
}

/// Replaces unquoted `$name` words with the tokens of the macro's value.
pub fn expand(toks: &[Token], macros: &HashMap<String, String>) -> Result<Vec<Token>, ConfigError> {
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        let name = match &t.tok {
            Tok::Word {
                text,
                quoted: false,
            } => text.strip_prefix('$'),
            _ => None,
        };
        let Some(name) = name else {
            out.push(t.clone());
            continue;
        };
        let value = macros.get(name).ok_or_else(|| {
            ConfigError::at(&t.file, t.line, format!("macro '{name}' not defined"))
        })?;
        // A macro's value is read again as tokens, without further expansion.
        for mut v in lex(value, Path::new(&*t.file))? {
            if v.tok != Tok::Newline {
                v.line = t.line;
                out.push(v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<String> {
        let mut m = HashMap::new();
        m.insert("lan".to_string(), "127.0.0.1 port 25".to_string());
        lex(src, Path::new("t.conf"))
            .and_then(|v| expand(&v, &m))
            .map(|v| {
                v.into_iter()
                    .map(|t| match t.tok {
                        Tok::Word { text, quoted } => {
                            if quoted {
                                format!("\"{text}\"")
                            } else {
                                text
                            }
                        }
                        Tok::Punct(c) => c.to_string(),
                        Tok::Newline => "NL".into(),
                    })
                    .collect()
            })
            .unwrap_or_else(|e| vec![e.to_string()])
    }

    #[test]
    fn tokens() {
        assert_eq!(
            words("listen on $lan # c\ntable t { a, b }\n"),
            [
                "listen",
                "on",
                "127.0.0.1",
                "port",
                "25",
                "NL",
                "table",
                "t",
                "{",
                "a",
                ",",
                "b",
                "}",
                "NL",
                "NL"
            ]
        );
        assert_eq!(
            words("a \"b \\\" c\" \\\n d"),
            ["a", "\"b \" c\"", "d", "NL"]
        );
        assert_eq!(
            words("match !from src <t>"),
            ["match", "!", "from", "src", "<", "t", ">", "NL"]
        );
        assert_eq!(
            words("t { 'a b' => \"c\", 'it\\'s' }"),
            ["t", "{", "\"a b\"", "=", "\"c\"", ",", "\"it's\"", "}", "NL"]
        );
        assert_eq!(words("x $nope"), ["t.conf:1: macro 'nope' not defined"]);
        assert_eq!(words("\n\"open"), ["t.conf:2: unterminated quoted string"]);
    }
}
