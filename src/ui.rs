//! Talking to the person at the terminal: messages and progress on stderr, results on stdout.
//!
//! Spinners appear only when stderr is a terminal and `--json` is off; otherwise guard prints
//! plain lines (or nothing but the JSON document with `--json`).
//!
//! Nothing guard prints may abort a run or a restore: a terminal that has gone away (EIO), a
//! pipe whose reader has exited (`guard -- cmd 2>&1 | head`, EPIPE; SIGPIPE is ignored, as
//! Rust's runtime does by default and `main` makes sure of) or any other write error is
//! ignored. Every message goes through [`to_stderr`]/[`to_stdout`] (the [`errln!`],
//! [`outln!`], [`out!`] macros): `println!`/`eprintln!` panic on a write error, and clippy
//! refuses them in this crate. The command's own output still reaches the run log whole.

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Write `s` to stderr and flush it, ignoring every error. Colors ([`paint`]) reach a terminal
/// and are taken out otherwise: `NO_COLOR` (set and not empty) turns them off, `CLICOLOR_FORCE`
/// keeps them on a pipe, `CLICOLOR=0` turns them off (anstream's rules).
pub fn to_stderr(s: &str) {
    // Above any progress bar, not through it.
    crate::progress::suspend(|| {
        let mut e = anstream::stderr().lock();
        let _ = e.write_all(s.as_bytes());
        let _ = e.flush();
    });
    log_text(s);
}

/// Write `s` to stdout and flush it, ignoring every error (colors as in [`to_stderr`]).
pub fn to_stdout(s: &str) {
    let mut o = anstream::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
    log_text(s);
}

/// `--log-file`: where guard's messages and the command's output are appended as well.
static LOG_FILE: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Open `--log-file PATH` for appending: created 0600 if absent, made 0600 if it was readable by
/// others, never followed through a symlink. Everything guard then prints (and the wrapped
/// command's and hooks' output) is appended, secrets masked and colors taken out, after a line
/// saying which guard wrote what follows.
pub fn open_log_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::other("is a symbolic link; give the file itself"),
            _ => e,
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("is not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    if let Ok(mut l) = LOG_FILE.lock() {
        *l = Some(f);
    }
    log_text(&format!(
        "==> guard {} (pid {}) at {}\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        crate::clock::rfc3339(crate::clock::now())
    ));
    Ok(())
}

/// Append text to `--log-file` (secrets masked, colors out); errors ignored like every print.
fn log_text(s: &str) {
    if let Ok(mut l) = LOG_FILE.lock() {
        if let Some(f) = l.as_mut() {
            let plain = anstream::adapter::strip_str(s).to_string();
            let _ = f.write_all(crate::secrets::redact(&plain).as_bytes());
        }
    }
}

/// Append bytes guard passes through (the command's and hooks' output, secrets already masked)
/// to `--log-file`.
pub fn log_bytes(b: &[u8]) {
    if let Ok(mut l) = LOG_FILE.lock() {
        if let Some(f) = l.as_mut() {
            let _ = f.write_all(&crate::secrets::redact_bytes(b));
        }
    }
}

/// The colors guard uses: pass, fail, warning.
pub mod color {
    use anstyle::{AnsiColor, Style};
    pub const PASS: Style = AnsiColor::Green.on_default();
    pub const FAIL: Style = AnsiColor::Red.on_default().bold();
    pub const WARN: Style = AnsiColor::Yellow.on_default().bold();
}

/// `text` in `style`; the escape codes are taken out on the way to a non-terminal.
pub fn paint(style: anstyle::Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// `eprintln!` that cannot panic: a line on stderr, write errors ignored.
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::ui::to_stderr(&format!("{}\n", format_args!($($t)*)))
    };
}

/// `eprint!` that cannot panic.
#[macro_export]
macro_rules! err {
    ($($t:tt)*) => {
        $crate::ui::to_stderr(&format!($($t)*))
    };
}

/// `println!` that cannot panic: a line on stdout, write errors ignored.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::ui::to_stdout(&format!("{}\n", format_args!($($t)*)))
    };
}

/// `print!` that cannot panic.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {
        $crate::ui::to_stdout(&format!($($t)*))
    };
}

/// How much guard says on stderr: `-q` only warnings, errors and what went wrong; `-v` also the
/// details (which policy file, store and lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    #[default]
    Normal,
    Verbose,
}

#[derive(Clone, Default)]
pub struct Ui {
    pub json: bool,
    pub tty: bool,
    pub verbosity: Verbosity,
    /// `--wait`: how long to wait for a policy's lock held by another guard (none: exit 75 at once).
    pub lock_wait: Option<Duration>,
}

/// A spinner for work of unknown length ([`crate::progress::spinner`]); gone when finished.
pub struct Spinner(crate::progress::Progress);

impl Spinner {
    pub fn finish(self) {
        drop(self.0);
    }
}

impl Ui {
    /// Progress is drawn for a person: stderr a terminal, no `--json`, no `-q`.
    pub fn wants_progress(&self) -> bool {
        self.tty && !self.json && self.verbosity != Verbosity::Quiet
    }

    pub fn new(json: bool) -> Self {
        Ui {
            json,
            tty: std::io::stderr().is_terminal(),
            ..Ui::default()
        }
    }

    /// A progress line for human readers (suppressed with `--json` and `-q`).
    pub fn info(&self, msg: &str) {
        let line = format!("{}\n", crate::secrets::redact(msg));
        if !self.json && self.verbosity >= Verbosity::Normal {
            to_stderr(&line);
        } else {
            // `--log-file` keeps what `--json`/`-q` leave off the terminal.
            log_text(&line);
        }
    }

    /// A detail only `-v` shows (never with `--json`).
    pub fn detail(&self, msg: &str) {
        if !self.json && self.verbosity >= Verbosity::Verbose {
            to_stderr(&format!("{}\n", crate::secrets::redact(msg)));
        }
    }

    /// Always shown on stderr.
    pub fn warn(&self, msg: &str) {
        to_stderr(&format!(
            "{} {}\n",
            paint(color::WARN, "guard: warning:"),
            crate::secrets::redact(msg)
        ));
    }

    /// What went wrong and what guard did about it: shown with `-q` too (not with `--json`).
    pub fn notice(&self, msg: &str) {
        let line = format!("{}\n", crate::secrets::redact(msg));
        if !self.json {
            to_stderr(&line);
        } else {
            log_text(&line);
        }
    }

    pub fn spinner(&self, msg: &str) -> Spinner {
        if self.json || !self.tty || self.verbosity == Verbosity::Quiet {
            return Spinner(crate::progress::Progress::hidden());
        }
        Spinner(crate::progress::spinner(msg))
    }

    /// Ask a yes/no question on the terminal. Without a terminal the answer is no.
    pub fn confirm(&self, question: &str) -> bool {
        if !std::io::stdin().is_terminal() {
            return false;
        }
        to_stderr(&format!("{question} [y/N] "));
        let mut s = String::new();
        if std::io::stdin().read_line(&mut s).is_err() {
            return false;
        }
        matches!(s.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
    }
}

/// The shape version every `--json` document carries as `"schema_version"` (docs/json.md).
/// A new field does not change it; a field that changes meaning, type or goes away does.
pub const JSON_SCHEMA_VERSION: u64 = 1;

thread_local! {
    /// Documents held back by [`collect_json`] (`--all`: one document for every policy).
    static HELD: std::cell::RefCell<Option<Vec<serde_json::Value>>> = const { std::cell::RefCell::new(None) };
}

/// `doc` with `"schema_version"` added (every document is an object; see docs/json.md).
pub fn versioned(doc: &serde_json::Value) -> serde_json::Value {
    debug_assert!(doc.is_object(), "a --json document is an object: {doc}");
    let mut doc = doc.clone();
    if let Some(o) = doc.as_object_mut() {
        o.insert("schema_version".into(), serde_json::json!(JSON_SCHEMA_VERSION));
    }
    doc
}

/// Print a JSON document on stdout (`"schema_version"` added), or hold it back while
/// [`collect_json`] runs.
pub fn print_json(v: &serde_json::Value) {
    let doc = versioned(v);
    let held = HELD.with(|h| match h.borrow_mut().as_mut() {
        Some(docs) => {
            docs.push(doc.clone());
            true
        }
        None => false,
    });
    if held {
        return;
    }
    // A `Value` always serializes; print the compact form should it ever not.
    let s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
    to_stdout(&format!("{}\n", crate::secrets::redact(&s)));
}

/// Run `f`, holding back the documents it prints; returns them with `f`'s result (for `--all`,
/// which prints one document listing every policy's).
pub fn collect_json<T>(f: impl FnOnce() -> T) -> (T, Vec<serde_json::Value>) {
    let outer = HELD.with(|h| h.borrow_mut().replace(Vec::new()));
    let r = f();
    let docs = HELD
        .with(|h| std::mem::replace(&mut *h.borrow_mut(), outer))
        .unwrap_or_default();
    (r, docs)
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Render rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<width$}  ", c, width = w[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect(), &mut out);
    }
    out
}
