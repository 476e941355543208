//! Progress for the person at the terminal: bytes, rate and ETA while a snapshot, a restore, a
//! drill or a verification moves an artifact, a count while prune deletes snapshots, and a
//! spinner (bytes and rate, no ETA) where the size is not known in advance (a snapshot's stream).
//!
//! Drawn only when stderr is a terminal and neither `--json` nor `-q` is given ([`enable`]);
//! otherwise not one byte is written. Code that moves data wraps its reader or writer
//! ([`reader`], [`writer`]) and does nothing else; every bar lives in one [`MultiProgress`], so
//! bars of parallel work stack instead of overwriting each other, and guard's own messages
//! ([`suspend`]) print above them.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);

fn multi() -> &'static MultiProgress {
    static M: OnceLock<MultiProgress> = OnceLock::new();
    M.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
}

/// Draw progress from now on when `on`: guard talks to a person (`Ui::wants_progress`).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Run `f` (which prints) with the bars taken off the screen, then draw them again.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    if enabled() {
        multi().suspend(f)
    } else {
        f()
    }
}

/// One bar, spinner or counter; cleared when dropped. Does nothing when progress is off.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(bar: ProgressBar, template: &str, label: &str) -> Progress {
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        let bar = multi().add(bar);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar.tick();
        Progress(Some(bar))
    }

    /// Nothing shown (progress is off, or the work is too small to matter).
    pub fn hidden() -> Progress {
        Progress(None)
    }

    /// `n` more bytes (or items) done.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
            multi().remove(&b);
        }
    }
}

/// Bytes of `label`: a bar with rate and ETA when `total` is known, a spinner with bytes and
/// rate when it is not.
pub fn bytes(label: &str, total: Option<u64>) -> Progress {
    if !enabled() {
        return Progress::hidden();
    }
    match total {
        Some(t) => Progress::new(
            ProgressBar::new(t),
            "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            label,
        ),
        None => Progress::new(
            ProgressBar::new_spinner(),
            "{spinner} {prefix} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
            label,
        ),
    }
}

/// `total` things of `label` (snapshots pruned): a bar with the count and ETA.
pub fn count(label: &str, total: u64) -> Progress {
    if !enabled() || total == 0 {
        return Progress::hidden();
    }
    Progress::new(
        ProgressBar::new(total),
        "{prefix} [{bar:30}] {pos}/{len} ETA {eta}",
        label,
    )
}

/// A spinner with `label` and the time elapsed, for work with no byte count (one check, one
/// verification).
pub fn spinner(label: &str) -> Progress {
    if !enabled() {
        return Progress::hidden();
    }
    Progress::new(ProgressBar::new_spinner(), "{spinner} {prefix} {elapsed}", label)
}

/// `inner`, counting the bytes read from it into a [`bytes`] progress.
pub struct CountingReader<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// `inner`, counting the bytes written to it into a [`bytes`] progress.
pub struct CountingWriter<W> {
    inner: W,
    progress: Progress,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `r` with progress of `label` (`total` bytes expected, if known).
pub fn reader<R: Read>(r: R, label: &str, total: Option<u64>) -> CountingReader<R> {
    CountingReader {
        inner: r,
        progress: bytes(label, total),
    }
}

/// `w` with progress of `label` (`total` bytes expected, if known).
pub fn writer<W: Write>(w: W, label: &str, total: Option<u64>) -> CountingWriter<W> {
    CountingWriter {
        inner: w,
        progress: bytes(label, total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_reader_and_writer_pass_every_byte_through_unchanged() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = reader(&data[..], "test", Some(data.len() as u64));
        let mut out = writer(Vec::new(), "test", None);
        std::io::copy(&mut r, &mut out).unwrap();
        assert_eq!(out.inner, data);
        assert!(!r.progress.is_shown(), "off unless enabled for a terminal");
    }
}
