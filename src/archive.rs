//! Streaming compression and hashing of artifacts.
//!
//! [`compress`] reads its input once: each block is hashed (SHA-256 and CRC-32) as it is read,
//! compressed on a pool of worker threads, and written in order as one ordinary single-member
//! gzip stream that stock `gunzip` reads. The compressed bytes are hashed as they are written,
//! so an artifact's two checksums (of the stored file and of its content) cost no second read.
//! Memory is bounded by the number of blocks in flight, not by the size of the input.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use flate2::{Compress, FlushCompress};
use sha2::{Digest as _, Sha256};

use crate::policy::Compression;

/// Size of the blocks compressed independently. Large enough that losing the dictionary
/// between blocks costs little ratio; small enough to keep memory in the low tens of MiB.
const BLOCK: usize = 1 << 20;
/// Dictionary carried from one block to the next (deflate's window).
const WINDOW: usize = 32 * 1024;

/// Byte count and SHA-256 of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub bytes: u64,
    pub sha256: String,
}

/// The result of compressing a stream: the digest of the content and of the gzip bytes.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub raw: Digest,
    pub stored: Digest,
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    pub fn finish(self) -> (W, Digest) {
        let sha256 = hex::encode(self.hasher.finalize());
        (
            self.inner,
            Digest {
                bytes: self.bytes,
                sha256,
            },
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    pub fn finish(self) -> Digest {
        Digest {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Read until `buf` is full or the input ends.
fn fill(r: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    buf.clear();
    buf.reserve(want);
    let mut chunk = r.take(want as u64);
    chunk.read_to_end(buf)?;
    Ok(())
}

struct Job {
    seq: u64,
    #[cfg_attr(not(feature = "zlib-rs"), allow(dead_code))]
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

fn deflate_block(level: u32, job: &Job) -> Result<Vec<u8>> {
    let mut c = Compress::new(flate2::Compression::new(level), false);
    // Carrying the previous block's last 32 KiB keeps the ratio of one long stream; only the
    // zlib-compatible backends can prime a raw deflate stream with a dictionary.
    #[cfg(feature = "zlib-rs")]
    if !job.dict.is_empty() {
        c.set_dictionary(&job.dict)
            .map_err(|e| anyhow!("deflate dictionary: {e}"))?;
    }
    let mut out = Vec::with_capacity(job.data.len() / 2 + 1024);
    let flush = if job.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(256 * 1024);
        }
        let status = c
            .compress_vec(&job.data[consumed..], &mut out, flush)
            .map_err(|e| anyhow!("deflate: {e}"))?;
        let done_input = c.total_in() as usize == job.data.len();
        match status {
            flate2::Status::StreamEnd => break,
            _ if done_input && !job.last && out.capacity() > out.len() => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Compress `input` into `out` as gzip, hashing both sides.
///
/// `level` 0-9 as gzip's; `threads` compressing workers (the calling thread reads, hashes and
/// writes). Returns the digests and the writer.
pub fn compress<R: Read, W: Write>(mut input: R, out: W, c: Compression) -> Result<(Compressed, W)> {
    let mut out = HashingWriter::new(out);
    // gzip header: magic, deflate, no flags, no mtime (reproducible), no extra flags, OS=unix.
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])?;

    let threads = c.threads.max(1);
    let level = c.level;
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = mpsc::channel::<(u64, Result<Vec<u8>>)>();
    let mut workers = Vec::new();
    for _ in 0..threads {
        let job_rx = Arc::clone(&job_rx);
        let res_tx = res_tx.clone();
        workers.push(std::thread::spawn(move || loop {
            let job = match job_rx.lock().expect("job queue").recv() {
                Ok(j) => j,
                Err(_) => return,
            };
            let r = deflate_block(level, &job);
            if res_tx.send((job.seq, r)).is_err() {
                return;
            }
        }));
    }
    drop(res_tx);

    let max_in_flight = threads * 2 + 1;
    let mut hasher = Sha256::new();
    let mut crc = crc32fast::Hasher::new();
    let mut raw_bytes = 0u64;
    let mut next_seq = 0u64; // next block to dispatch
    let mut write_seq = 0u64; // next block to write
    let mut done: BTreeMap<u64, Vec<u8>> = BTreeMap::new();

    let write_ready =
        |done: &mut BTreeMap<u64, Vec<u8>>, write_seq: &mut u64, out: &mut HashingWriter<W>| -> Result<()> {
            while let Some(buf) = done.remove(write_seq) {
                out.write_all(&buf).context("writing compressed data")?;
                *write_seq += 1;
            }
            Ok(())
        };

    let mut current = Vec::new();
    fill(&mut input, &mut current, BLOCK).context("reading input")?;
    let mut dict: Vec<u8> = Vec::new();
    loop {
        let mut next = Vec::new();
        let last = if current.len() < BLOCK {
            true
        } else {
            fill(&mut input, &mut next, BLOCK).context("reading input")?;
            next.is_empty()
        };
        hasher.update(&current);
        crc.update(&current);
        raw_bytes += current.len() as u64;
        let new_dict = if last {
            Vec::new()
        } else {
            current[current.len().saturating_sub(WINDOW)..].to_vec()
        };
        let job = Job {
            seq: next_seq,
            dict: std::mem::take(&mut dict),
            data: current,
            last,
        };
        dict = new_dict;
        job_tx.send(job).map_err(|_| anyhow!("compression worker stopped"))?;
        next_seq += 1;
        // Keep the number of blocks in flight bounded.
        while next_seq - write_seq >= max_in_flight as u64 || (last && write_seq < next_seq) {
            let (seq, r) = res_rx.recv().map_err(|_| anyhow!("compression worker stopped"))?;
            done.insert(seq, r?);
            write_ready(&mut done, &mut write_seq, &mut out)?;
        }
        if last {
            break;
        }
        current = next;
    }
    drop(job_tx);
    for w in workers {
        let _ = w.join();
    }
    let crc = crc.finalize();
    out.write_all(&crc.to_le_bytes())?;
    out.write_all(&((raw_bytes & 0xffff_ffff) as u32).to_le_bytes())?;
    out.flush()?;
    let raw = Digest {
        bytes: raw_bytes,
        sha256: hex::encode(hasher.finalize()),
    };
    let (w, stored) = out.finish();
    Ok((Compressed { raw, stored }, w))
}

/// Digest of a stream (SHA-256 and length), read to the end.
pub fn digest(mut r: impl Read) -> io::Result<Digest> {
    let mut h = HashingReader::new(&mut r);
    io::copy(&mut h, &mut io::sink())?;
    Ok(h.finish())
}

/// Read a stored gzip artifact once: the digest of the stored bytes, and of the content it
/// decompresses to, written to `sink`.
///
/// The calling thread reads and inflates; a second thread hashes the content and writes it to
/// `sink`, so inflating (the serial part) is all the calling thread does per block.
pub fn decompress(stored: impl Read, sink: impl Write + Send) -> Result<Compressed> {
    /// Content blocks handed to the hashing and writing thread.
    const CHUNK: usize = 1 << 20;
    let mut reader = HashingReader::new(stored);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(2);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    let (read, written) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> io::Result<Digest> {
            let mut w = HashingWriter::new(sink);
            for buf in rx {
                w.write_all(&buf)?;
                let _ = back_tx.send(buf);
            }
            w.flush()?;
            Ok(w.finish().1)
        });
        let read = (|| -> Result<()> {
            let mut dec = flate2::read::MultiGzDecoder::new(&mut reader);
            loop {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                fill(&mut dec, &mut buf, CHUNK).context("not a valid gzip stream")?;
                if buf.is_empty() {
                    return Ok(());
                }
                if tx.send(buf).is_err() {
                    // The writer stopped: its error is the one to report.
                    return Ok(());
                }
            }
        })();
        drop(tx);
        (read, writer.join().expect("decompress writer thread"))
    });
    read?;
    let raw = written.context("writing the decompressed content")?;
    // Anything after the gzip stream would be hashed as stored bytes but never read: drain it.
    io::copy(&mut reader, &mut io::sink())?;
    Ok(Compressed {
        raw,
        stored: reader.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn roundtrip(data: &[u8], threads: usize, level: u32) {
        let (c, gz) = compress(
            Cursor::new(data),
            Vec::new(),
            Compression {
                level,
                threads,
                level_set: true,
            },
        )
        .unwrap();
        assert_eq!(c.raw.bytes, data.len() as u64);
        assert_eq!(c.stored.bytes, gz.len() as u64);
        assert_eq!(c.stored.sha256, hex::encode(Sha256::digest(&gz)));
        assert_eq!(c.raw.sha256, hex::encode(Sha256::digest(data)));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert!(back == data, "roundtrip mismatch for {} bytes", data.len());
        let d = decompress(&gz[..], io::sink()).unwrap();
        assert_eq!(d.raw, c.raw);
        assert_eq!(d.stored, c.stored);
    }

    #[test]
    fn roundtrips_sizes_and_levels() {
        let mut data = Vec::new();
        let mut x: u32 = 1;
        for i in 0..(3 * BLOCK + 12345) {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            data.push(if i % 7 == 0 {
                (x >> 16) as u8
            } else {
                b"guard rolls back "[i % 17]
            });
        }
        for &n in &[0usize, 1, 100, BLOCK - 1, BLOCK, BLOCK + 1, data.len()] {
            roundtrip(&data[..n], 2, 6);
        }
        roundtrip(&data, 1, 1);
        roundtrip(&data, 3, 9);
        roundtrip(&data, 2, 0);
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let (_, mut gz) = compress(
            Cursor::new(vec![7u8; 100_000]),
            Vec::new(),
            Compression {
                level: 6,
                threads: 2,
                level_set: true,
            },
        )
        .unwrap();
        let n = gz.len();
        gz.truncate(n - 3);
        assert!(decompress(&gz[..], io::sink()).is_err());
    }
}
