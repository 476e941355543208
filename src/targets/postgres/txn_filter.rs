//! The dump's own transaction control, taken out of the SQL on its way to psql.
//!
//! pg_dump (`-Fp`) and `pg_restore -f -` wrap the data of large objects in `BEGIN;` … `COMMIT;`
//! lines. Replayed inside guard's restore transaction, that `BEGIN` only warns and that
//! `COMMIT` commits the half-done restore (red-team finding 7). [`TxnFilter`] passes the SQL
//! through byte for byte except those two statements: a line that is exactly `BEGIN;` or
//! `COMMIT;` *between two statements* becomes an empty line. It tells a statement boundary from
//! text inside a string, a quoted identifier, a dollar-quoted body, a comment or `COPY` data the
//! way psql's lexer does, so a function body or a row holding such a line is left alone.

use std::io::{self, Write};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Top-level SQL.
    Normal,
    /// After a `-` in `Normal`: a second one starts a comment.
    Dash,
    /// After a `/` in `Normal`: a `*` starts a block comment.
    Slash,
    /// `--` to the end of the line.
    LineComment,
    /// `/* … */`, which nests; `prev` is the byte before (for `*/` and `/*`).
    Block { depth: u32, prev: u8 },
    /// `'…'`; `esc`: a backslash escapes the next byte (`E'…'`, or
    /// `standard_conforming_strings = off`).
    Quote { esc: bool, backslash: bool },
    /// `"…"`.
    Ident,
    /// After a `$` that may open a dollar quote; the tag so far is in `Lexer::tag`.
    DollarOpen,
    /// Inside `$tag$…$tag$`; `matched` bytes of the closing `$tag$` seen.
    Dollar { matched: usize },
    /// A psql meta-command (`\restrict KEY`), to the end of the line.
    Meta,
    /// `COPY … FROM stdin` data, up to a line `\.`: `line_start` at the start of a line, `end`
    /// bytes of `\.` (and `\r`) matched there.
    Copy { line_start: bool, end: u8 },
}

/// Where the SQL stands: inside which kind of token, and whether a statement has begun.
#[derive(Debug)]
struct Lexer {
    mode: Mode,
    /// A statement has begun and its `;` has not come yet.
    in_stmt: bool,
    /// Parentheses open in the statement: like psql, a `;` inside them does not end it (a
    /// rule's `DO ALSO (…; …)`).
    parens: u32,
    /// The statement just ended was `COPY … FROM stdin`: data follows from the next line.
    copy_next_line: bool,
    /// Length of the identifier or keyword being read (`$` inside one is part of it), and
    /// whether it is a lone `E` (so a `'` right after opens an escape string).
    word: usize,
    word_is_e: bool,
    /// `standard_conforming_strings = off` was set: `'…'` takes backslash escapes.
    backslash_quotes: bool,
    tag: Vec<u8>,
    /// The statement's first and last bytes outside strings and comments, upper-cased, runs of
    /// white space as one space (to recognise `COPY … FROM stdin` and `SET
    /// standard_conforming_strings`).
    head: Vec<u8>,
    tail: Vec<u8>,
}

const HEAD: usize = 64;
const TAIL: usize = 16;

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_tag_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

impl Lexer {
    fn new() -> Lexer {
        Lexer {
            mode: Mode::Normal,
            in_stmt: false,
            parens: 0,
            copy_next_line: false,
            word: 0,
            word_is_e: false,
            backslash_quotes: false,
            tag: Vec::new(),
            head: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// Between two statements, outside any token: where the dump's `BEGIN;` and `COMMIT;` are.
    fn between_statements(&self) -> bool {
        self.mode == Mode::Normal && !self.in_stmt && !self.copy_next_line
    }

    /// Record a significant byte of the statement's text.
    fn note(&mut self, b: u8) {
        let b = if b.is_ascii_whitespace() {
            b' '
        } else {
            b.to_ascii_uppercase()
        };
        if b == b' ' && self.tail.last().is_none_or(|&l| l == b' ') {
            return;
        }
        if self.head.len() < HEAD {
            self.head.push(b);
        }
        if self.tail.len() == TAIL {
            self.tail.remove(0);
        }
        self.tail.push(b);
    }

    fn end_statement(&mut self) {
        let tail = String::from_utf8_lossy(&self.tail);
        let head = String::from_utf8_lossy(&self.head);
        if head.starts_with("COPY ") && tail.trim_end().ends_with("FROM STDIN") {
            self.copy_next_line = true;
        }
        match head.trim_end() {
            "SET STANDARD_CONFORMING_STRINGS = OFF" | "SET STANDARD_CONFORMING_STRINGS TO OFF" => {
                self.backslash_quotes = true
            }
            "SET STANDARD_CONFORMING_STRINGS = ON" | "SET STANDARD_CONFORMING_STRINGS TO ON" => {
                self.backslash_quotes = false
            }
            _ => {}
        }
        self.in_stmt = false;
        self.parens = 0;
        self.head.clear();
        self.tail.clear();
    }

    /// A byte in `Normal` mode.
    fn normal(&mut self, b: u8) {
        let was_e = self.word_is_e;
        if is_ident(b) && (self.word > 0 || b != b'$') {
            self.word_is_e = self.word == 0 && (b == b'E' || b == b'e');
            self.word += 1;
            self.in_stmt = true;
            self.note(b);
            return;
        }
        let in_word = self.word > 0;
        self.word = 0;
        self.word_is_e = false;
        match b {
            b'\n' if self.copy_next_line => {
                self.copy_next_line = false;
                self.mode = Mode::Copy {
                    line_start: true,
                    end: 0,
                };
            }
            b if b.is_ascii_whitespace() => {
                if self.in_stmt {
                    self.note(b);
                }
            }
            b'-' => self.mode = Mode::Dash,
            b'/' => self.mode = Mode::Slash,
            b'\'' => {
                self.in_stmt = true;
                self.note(b);
                self.mode = Mode::Quote {
                    esc: self.backslash_quotes || (in_word && was_e),
                    backslash: false,
                };
            }
            b'"' => {
                self.in_stmt = true;
                self.note(b);
                self.mode = Mode::Ident;
            }
            b'$' => {
                // Not inside a word (there `$` is part of the identifier).
                self.in_stmt = true;
                self.note(b);
                self.tag.clear();
                self.mode = Mode::DollarOpen;
            }
            b'\\' if !self.in_stmt => self.mode = Mode::Meta,
            b';' if self.parens == 0 => self.end_statement(),
            b'(' | b')' => {
                self.in_stmt = true;
                self.note(b);
                self.parens = if b == b'(' {
                    self.parens + 1
                } else {
                    self.parens.saturating_sub(1)
                };
            }
            b => {
                self.in_stmt = true;
                self.note(b);
            }
        }
    }

    fn feed(&mut self, buf: &[u8]) {
        let mut i = 0;
        while i < buf.len() {
            match self.step(buf, i) {
                Step::Next => i += 1,
                Step::Again => {}
                Step::To(j) => i = j,
                Step::Done => return,
            }
        }
    }

    /// Lex `buf[i]` in the current mode; a mode that scans for its closing byte jumps there.
    fn step(&mut self, buf: &[u8], i: usize) -> Step {
        let b = buf[i];
        match self.mode {
            Mode::Normal => {
                self.normal(b);
                Step::Next
            }
            Mode::Dash => self.after_first(b, b'-', Mode::LineComment),
            Mode::Slash => self.after_first(b, b'*', Mode::Block { depth: 1, prev: 0 }),
            // The newline, in Normal (it may start COPY data).
            Mode::LineComment => self.skip_to(buf, i, b'\n', Mode::Normal, false),
            Mode::Block { depth, prev } => {
                self.mode = match (prev, b) {
                    (b'*', b'/') if depth == 1 => Mode::Normal,
                    (b'*', b'/') => Mode::Block {
                        depth: depth - 1,
                        prev: 0,
                    },
                    (b'/', b'*') => Mode::Block {
                        depth: depth + 1,
                        prev: 0,
                    },
                    _ => Mode::Block { depth, prev: b },
                };
                Step::Next
            }
            Mode::Quote { esc, backslash } => self.quote(buf, i, esc, backslash),
            Mode::Ident => self.skip_to(buf, i, b'"', Mode::Normal, true),
            Mode::DollarOpen => self.dollar_open(b),
            Mode::Dollar { matched } => self.dollar(buf, i, matched),
            Mode::Meta => self.skip_to(buf, i, b'\n', Mode::Normal, true),
            Mode::Copy { line_start, end } => self.copy(buf, i, line_start, end),
        }
    }

    /// After a `-` or `/` in Normal: `second` opens `then`; anything else makes the first byte
    /// plain SQL, and `b` is lexed again in Normal.
    fn after_first(&mut self, b: u8, second: u8, then: Mode) -> Step {
        if b == second {
            self.mode = then;
            return Step::Next;
        }
        self.mode = Mode::Normal;
        self.in_stmt = true;
        self.note(if second == b'-' { b'-' } else { b'/' });
        Step::Again
    }

    /// Skip to the next `stop` byte and switch to `then` there; `past`: the stop byte belongs
    /// to the token (skipped), else it is lexed again in `then`. No stop byte: the rest of
    /// `buf` is inside the token.
    fn skip_to(&mut self, buf: &[u8], i: usize, stop: u8, then: Mode, past: bool) -> Step {
        match buf[i..].iter().position(|&c| c == stop) {
            Some(p) => {
                self.mode = then;
                Step::To(i + p + usize::from(past))
            }
            None => Step::Done,
        }
    }

    fn quote(&mut self, buf: &[u8], i: usize, esc: bool, backslash: bool) -> Step {
        let b = buf[i];
        if backslash {
            self.mode = Mode::Quote { esc, backslash: false };
        } else if b == b'\'' {
            // `''` inside a string closes and reopens it: the same to a lexer.
            self.mode = Mode::Normal;
        } else if esc && b == b'\\' {
            self.mode = Mode::Quote { esc, backslash: true };
        } else {
            let stop = |c: &u8| *c == b'\'' || (esc && *c == b'\\');
            return match buf[i..].iter().position(stop) {
                Some(p) => Step::To(i + p),
                None => Step::Done,
            };
        }
        Step::Next
    }

    fn dollar_open(&mut self, b: u8) -> Step {
        if b == b'$' {
            self.mode = Mode::Dollar { matched: 0 };
        } else if (self.tag.is_empty() && is_tag_start(b))
            || (!self.tag.is_empty() && (is_tag_start(b) || b.is_ascii_digit()))
        {
            self.tag.push(b);
        } else {
            // `$1`, or a `$` that opens nothing: plain SQL after all.
            self.mode = Mode::Normal;
            self.word = self.tag.len();
            return Step::Again;
        }
        Step::Next
    }

    fn dollar(&mut self, buf: &[u8], i: usize, matched: usize) -> Step {
        let b = buf[i];
        // The closing delimiter is `$` tag `$`; `matched` counts its bytes seen.
        let want = if matched == 0 || matched == self.tag.len() + 1 {
            b'$'
        } else {
            self.tag[matched - 1]
        };
        if b == want {
            if matched == self.tag.len() + 1 {
                self.mode = Mode::Normal;
            } else {
                self.mode = Mode::Dollar { matched: matched + 1 };
            }
        } else if b == b'$' {
            self.mode = Mode::Dollar { matched: 1 };
        } else if matched > 0 {
            self.mode = Mode::Dollar { matched: 0 };
        } else {
            return match buf[i..].iter().position(|&c| c == b'$') {
                Some(p) => Step::To(i + p),
                None => Step::Done,
            };
        }
        Step::Next
    }

    fn copy(&mut self, buf: &[u8], i: usize, line_start: bool, end: u8) -> Step {
        self.mode = match (line_start, end, buf[i]) {
            (true, 0, b'\\') => Mode::Copy {
                line_start: true,
                end: 1,
            },
            (true, 1, b'.') => Mode::Copy {
                line_start: true,
                end: 2,
            },
            (true, 2, b'\r') => Mode::Copy {
                line_start: true,
                end: 3,
            },
            (true, 2 | 3, b'\n') => Mode::Normal,
            (_, _, b'\n') => Mode::Copy {
                line_start: true,
                end: 0,
            },
            _ => {
                self.mode = Mode::Copy {
                    line_start: false,
                    end: 0,
                };
                return match buf[i..].iter().position(|&c| c == b'\n') {
                    Some(p) => Step::To(i + p),
                    None => Step::Done,
                };
            }
        };
        Step::Next
    }
}

/// What [`Lexer::feed`] does after one step.
enum Step {
    /// On to the next byte.
    Next,
    /// The same byte again (the mode changed).
    Again,
    /// Go on at this index.
    To(usize),
    /// The rest of the buffer is inside the current token.
    Done,
}

/// A `Write` that passes SQL on to `out` without the dump's own top-level `BEGIN;` and
/// `COMMIT;` lines (each becomes an empty line, so psql's line numbers stay right).
pub struct TxnFilter<W: Write> {
    out: W,
    lex: Lexer,
    /// The start of the current line, held back while it may still be `BEGIN;` or `COMMIT;`.
    held: Vec<u8>,
    holding: bool,
    at_line_start: bool,
    /// How many lines were taken out.
    pub removed: u64,
}

const CONTROL: [&[u8]; 2] = [b"BEGIN;", b"COMMIT;"];
/// Longest line that can be one of [`CONTROL`], with `\r`.
const CONTROL_MAX: usize = 8;

impl<W: Write> TxnFilter<W> {
    pub fn new(out: W) -> Self {
        TxnFilter {
            out,
            lex: Lexer::new(),
            held: Vec::new(),
            holding: false,
            at_line_start: true,
            removed: 0,
        }
    }

    /// Pass `bytes` on (lexed as SQL).
    fn pass(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.lex.feed(bytes);
        if let Some(&last) = bytes.last() {
            self.at_line_start = last == b'\n';
        }
        self.out.write_all(bytes)
    }

    fn release_held(&mut self) -> io::Result<()> {
        self.holding = false;
        let held = std::mem::take(&mut self.held);
        self.pass(&held)
    }

    /// Write out what is held back (a last line without a newline) and flush. Call it once,
    /// at the end of the SQL.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.holding {
            let line = self.held.strip_suffix(b"\r").unwrap_or(&self.held);
            if CONTROL.contains(&line) {
                self.removed += 1;
                self.held.clear();
                self.holding = false;
            } else {
                self.release_held()?;
            }
        }
        self.out.flush()
    }

    /// The wrapped writer.
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Write for TxnFilter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut i = 0;
        while i < buf.len() {
            if self.at_line_start && !self.holding && self.lex.between_statements() {
                self.holding = true;
            }
            if self.holding {
                let lim = (i + CONTROL_MAX + 1 - self.held.len()).min(buf.len());
                match buf[i..lim].iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        self.held.extend_from_slice(&buf[i..i + p]);
                        let line = self.held.strip_suffix(b"\r").unwrap_or(&self.held);
                        if CONTROL.contains(&line) {
                            self.removed += 1;
                            self.held.clear();
                            self.holding = false;
                            self.out.write_all(b"\n")?;
                            self.at_line_start = true;
                        } else {
                            self.held.push(b'\n');
                            self.release_held()?;
                        }
                        i += p + 1;
                    }
                    None => {
                        self.held.extend_from_slice(&buf[i..lim]);
                        i = lim;
                        let maybe = self.held.len() <= CONTROL_MAX
                            && CONTROL.iter().any(|c| {
                                let n = self.held.len().min(c.len());
                                c[..n] == self.held[..n] && self.held[n..].iter().all(|&b| b == b'\r')
                            });
                        if !maybe {
                            self.release_held()?;
                        }
                    }
                }
                continue;
            }
            let end = buf[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| i + p + 1)
                .unwrap_or(buf.len());
            self.pass(&buf[i..end])?;
            i = end;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filter `sql` fed in pieces of `step` bytes.
    fn filter(sql: &str, step: usize) -> (String, u64) {
        let mut f = TxnFilter::new(Vec::new());
        for c in sql.as_bytes().chunks(step) {
            f.write_all(c).unwrap();
        }
        f.finish().unwrap();
        let removed = f.removed;
        (String::from_utf8(f.into_inner()).unwrap(), removed)
    }

    fn all_steps(sql: &str, want: &str, removed: u64) {
        for step in [1, 2, 3, 5, 7, 8, 9, 13, 64, 4096] {
            let (got, n) = filter(sql, step);
            assert_eq!(got, want, "step {step}");
            assert_eq!(n, removed, "step {step}");
        }
    }

    #[test]
    fn the_large_object_wrapper_is_taken_out() {
        let sql = "SET x = 1;\n\n--\n-- Data for Name: BLOBS; Type: BLOBS; Schema: -; Owner: -\n--\n\nBEGIN;\n\nSELECT pg_catalog.lo_open('9001', 131072);\nSELECT pg_catalog.lowrite(0, '\\x6c6f');\nSELECT pg_catalog.lo_close(0);\n\nCOMMIT;\n\n--\nGRANT SELECT ON t TO r;\n";
        let want = sql.replace("\nBEGIN;\n", "\n\n").replace("\nCOMMIT;\n", "\n\n");
        all_steps(sql, &want, 2);
    }

    #[test]
    fn text_that_only_looks_like_transaction_control_is_kept() {
        let cases = [
            // a procedure body, dollar-quoted with a tag and without
            "CREATE PROCEDURE p() LANGUAGE plpgsql AS $body$\nBEGIN\nCOMMIT;\nEND\n$body$;\n",
            "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$\nBEGIN;\nCOMMIT;\n$$;\n",
            // a string literal, an escape string, a quoted identifier, comments
            "COMMENT ON TABLE t IS 'first\nCOMMIT;\nlast';\n",
            "COMMENT ON TABLE t IS E'it\\'s\nCOMMIT;\nlast';\n",
            "CREATE TABLE \"a\nCOMMIT;\nb\" (x int);\n",
            "/* block\nCOMMIT;\n/* nested\nBEGIN;\n*/ still\nCOMMIT;\n*/\n",
            // COPY data: rows whose text is a control line, or the end marker escaped
            "COPY public.notes (id, body) FROM stdin;\n1\tx\nBEGIN;\nCOMMIT;\n\\\\.\n\\.\n",
            // a statement split over lines
            "SELECT 1\nFROM t WHERE a = 1 AND\nb = 2\n;\n",
            // a semicolon inside parentheses does not end a statement (psql's rule too)
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1);\nCOMMIT;\nINSERT INTO b VALUES (2));\n",
        ];
        for sql in cases {
            all_steps(sql, sql, 0);
        }
    }

    #[test]
    fn after_a_copy_block_statements_are_lexed_again() {
        let sql = "COPY t (a) FROM stdin;\nBEGIN;\n\\.\n\nBEGIN;\nSELECT 'a$$b';\nSELECT $1, a$b$ FROM x;\nCOMMIT;\n";
        let want = "COPY t (a) FROM stdin;\nBEGIN;\n\\.\n\n\nSELECT 'a$$b';\nSELECT $1, a$b$ FROM x;\n\n";
        all_steps(sql, want, 2);
    }

    #[test]
    fn a_dollar_quote_closes_only_on_its_own_tag() {
        let sql = "DO $a$ BEGIN PERFORM $b$ x $a $ $b$; END $a$;\nCOMMIT;\n";
        all_steps(sql, "DO $a$ BEGIN PERFORM $b$ x $a $ $b$; END $a$;\n\n", 1);
        let sql = "SELECT $x$\n$x\nCOMMIT;\n$x$;\nCOMMIT;\n";
        all_steps(sql, "SELECT $x$\n$x\nCOMMIT;\n$x$;\n\n", 1);
    }

    #[test]
    fn backslash_quotes_when_standard_conforming_strings_is_off() {
        let sql = "SET standard_conforming_strings = off;\nSELECT 'a\\'\nCOMMIT;\n';\nCOMMIT;\n";
        all_steps(
            sql,
            "SET standard_conforming_strings = off;\nSELECT 'a\\'\nCOMMIT;\n';\n\n",
            1,
        );
        // with it on, a backslash is just a byte: the string ends at the second quote
        let sql = "SELECT 'a\\';\nCOMMIT;\n";
        all_steps(sql, "SELECT 'a\\';\n\n", 1);
    }

    #[test]
    fn meta_commands_and_a_last_line_without_newline() {
        let sql = "\\restrict abc'def\nBEGIN;\nSELECT 1;\n\\unrestrict abc'def\nCOMMIT;";
        all_steps(sql, "\\restrict abc'def\n\nSELECT 1;\n\\unrestrict abc'def\n", 2);
        let sql = "SELECT 1;\nCOMMIT; -- not alone\nBEGIN ;\nCOMMIT;\r\n";
        all_steps(sql, "SELECT 1;\nCOMMIT; -- not alone\nBEGIN ;\n\n", 1);
    }
}
