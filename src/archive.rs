//! Streaming compression and hashing of artifacts.
//!
//! [`compress`] reads its input once: each 1 MiB block is hashed (SHA-256) as it is read,
//! compressed on a pool of worker threads into a gzip member of its own, inflated again and
//! compared with its input (so the stored bytes are known to decompress to the content whose
//! checksum is recorded), and written in order. Stock `gunzip` reads the members as one stream.
//! The compressed bytes are hashed as they are written, so an artifact's two checksums (of the
//! stored file and of its content) cost no second read. Memory is bounded by the number of
//! blocks in flight, not by the size of the input. [`decompress`] reads guard's members whole
//! (each says its length) and any other gzip as a stream.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};

/// gzip level and worker threads for artifacts (`[compression]` in the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub level: u32,
    pub threads: usize,
    /// `[compression] level` is set in the policy: it then applies to every artifact, over the
    /// default of a target kind that has its own (PostgreSQL dumps).
    pub level_set: bool,
}

impl Default for Compression {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Compression {
            level: 6,
            threads,
            level_set: false,
        }
    }
}

impl Compression {
    /// These settings with `level` as the default: the policy's own level still wins when set.
    pub fn default_level(self, level: u32) -> Compression {
        if self.level_set {
            self
        } else {
            Compression { level, ..self }
        }
    }
}

/// Size of the blocks compressed independently. Large enough that starting each with an empty
/// dictionary costs little ratio (measured: under 0.1% against 4 MiB blocks); small enough to
/// keep memory in the low tens of MiB.
const BLOCK: usize = 1 << 20;

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
    data: Vec<u8>,
}

/// Gzip member header: magic, deflate, FLG.FEXTRA, no mtime (reproducible), XFL 0, OS unix,
/// then XLEN 8 and one extra subfield `GD` of 4 bytes holding the member's total length (as
/// BGZF does with `BC`), so a reader finds each member's end without inflating to it.
const HEADER: [u8; 16] = [0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 3, 8, 0, b'G', b'D', 4, 0];
const HEADER_LEN: usize = HEADER.len() + 4;
const TRAILER_LEN: usize = 8;
/// Content a member of ours may claim (ISIZE); more is not ours, or corrupt.
const MEMBER_RAW_MAX: usize = 64 << 20;

/// One worker's compressor and the decompressor that proves its output.
struct Deflater {
    level: u32,
    /// libdeflate for levels 0-8; zlib-rs for 9, where it is both faster and smaller here
    /// (docs/performance.md, "Compression").
    compressor: Option<libdeflater::Compressor>,
    checker: libdeflater::Decompressor,
    scratch: Vec<u8>,
}

impl Deflater {
    fn new(level: u32) -> Result<Deflater> {
        if level > 9 {
            bail!("compression level {level} is out of range (0-9)");
        }
        let compressor = if level == 9 {
            None
        } else {
            let lvl = libdeflater::CompressionLvl::new(level as i32)
                .map_err(|_| anyhow!("compression level {level} is out of range"))?;
            Some(libdeflater::Compressor::new(lvl))
        };
        Ok(Deflater {
            level,
            compressor,
            checker: libdeflater::Decompressor::new(),
            scratch: Vec::new(),
        })
    }

    /// `data` as raw deflate, appended to `out`.
    fn deflate(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        match &mut self.compressor {
            Some(c) => {
                let bound = c.deflate_compress_bound(data.len());
                out.resize(start + bound, 0);
                let n = c
                    .deflate_compress(data, &mut out[start..])
                    .map_err(|e| anyhow!("deflate (level {}): {e:?}", self.level))?;
                out.truncate(start + n);
            }
            None => {
                let mut c = flate2::Compress::new(flate2::Compression::new(self.level), false);
                out.reserve(data.len() + data.len() / 1000 + 1024);
                loop {
                    let consumed = c.total_in() as usize;
                    if out.capacity() - out.len() < 64 * 1024 {
                        out.reserve(256 * 1024);
                    }
                    let status = c
                        .compress_vec(&data[consumed..], out, flate2::FlushCompress::Finish)
                        .map_err(|e| anyhow!("deflate (level {}): {e}", self.level))?;
                    if status == flate2::Status::StreamEnd {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// `data` as one complete gzip member, after proving that the member inflates back to
    /// exactly `data`: what is stored is known to decompress to what was read, with no second
    /// pass over the artifact.
    fn member(&mut self, seq: u64, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(HEADER_LEN + data.len() / 2 + 1024);
        out.extend_from_slice(&HEADER);
        out.extend_from_slice(&[0; 4]); // the member's length, known once compressed
        self.deflate(data, &mut out)?;
        let n = out.len() - HEADER_LEN;
        self.prove(seq, &out[HEADER_LEN..], data)?;
        let total = HEADER_LEN + n + TRAILER_LEN;
        out[HEADER.len()..HEADER_LEN].copy_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Ok(out)
    }
}

impl Deflater {
    /// Inflate `deflated` and compare it with `data`, byte for byte.
    fn prove(&mut self, seq: u64, deflated: &[u8], data: &[u8]) -> Result<()> {
        self.scratch.resize(data.len(), 0);
        let back = self
            .checker
            .deflate_decompress(deflated, &mut self.scratch)
            .map_err(|e| anyhow!("block {seq} does not decompress ({e:?}): compressor fault"))?;
        if back != data.len() || self.scratch[..] != data[..] {
            bail!("block {seq} does not decompress to the bytes compressed: compressor fault");
        }
        Ok(())
    }
}

/// Compress `input` into `out` as gzip, hashing both sides.
///
/// `level` 0-9 as gzip's; `threads` compressing workers (the calling thread reads, hashes and
/// writes). The output is one gzip member per block: each block is compressed on its own
/// (blocks are large enough that a fresh dictionary costs a fraction of a percent), and stock
/// `gunzip` reads the members as one stream. Returns the digests and the writer.
pub fn compress<R: Read, W: Write>(mut input: R, out: W, c: Compression) -> Result<(Compressed, W)> {
    let mut out = HashingWriter::new(out);
    let threads = c.threads.max(1);
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = mpsc::channel::<(u64, Result<Vec<u8>>)>();
    let mut workers = Vec::new();
    for _ in 0..threads {
        let mut d = Deflater::new(c.level)?;
        let job_rx = Arc::clone(&job_rx);
        let res_tx = res_tx.clone();
        workers.push(std::thread::spawn(move || loop {
            let job = match job_rx.lock().expect("job queue").recv() {
                Ok(j) => j,
                Err(_) => return,
            };
            let r = d.member(job.seq, &job.data);
            if res_tx.send((job.seq, r)).is_err() {
                return;
            }
        }));
    }
    drop(res_tx);

    let max_in_flight = (threads * 2 + 1) as u64;
    let mut hasher = Sha256::new();
    let mut raw_bytes = 0u64;
    let mut next_seq = 0u64; // next block to dispatch
    let mut write_seq = 0u64; // next block to write
    let mut done: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let collect = |done: &mut BTreeMap<u64, Vec<u8>>, write_seq: &mut u64, out: &mut HashingWriter<W>| -> Result<()> {
        let (seq, r) = res_rx.recv().map_err(|_| anyhow!("compression worker stopped"))?;
        done.insert(seq, r?);
        while let Some(buf) = done.remove(write_seq) {
            out.write_all(&buf).context("writing compressed data")?;
            *write_seq += 1;
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        loop {
            let mut data = Vec::new();
            fill(&mut input, &mut data, BLOCK).context("reading input")?;
            let last = data.len() < BLOCK;
            // Empty input still makes one (empty) member: a valid gzip file.
            if data.is_empty() && next_seq > 0 {
                break;
            }
            hasher.update(&data);
            raw_bytes += data.len() as u64;
            job_tx
                .send(Job { seq: next_seq, data })
                .map_err(|_| anyhow!("compression worker stopped"))?;
            next_seq += 1;
            // Keep the number of blocks in flight bounded.
            while next_seq - write_seq >= max_in_flight {
                collect(&mut done, &mut write_seq, &mut out)?;
            }
            if last {
                break;
            }
        }
        while write_seq < next_seq {
            collect(&mut done, &mut write_seq, &mut out)?;
        }
        Ok(())
    })();
    drop(job_tx);
    for w in workers {
        let _ = w.join();
    }
    result?;
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
    // Large reads: an artifact of hundreds of MB is read in a few hundred calls, not tens of
    // thousands.
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Digest {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Read a stored gzip artifact once: the digest of the stored bytes, and of the content it
/// decompresses to, written to `sink`.
///
/// guard's own members (see [`compress`]) say how long they are, so each is read whole and
/// inflated in one call; any other gzip (an artifact made by hand, or by a guard from before
/// members carried their length) is inflated as a stream. The calling thread reads and
/// inflates; a second thread hashes the content and writes it to `sink`.
pub fn decompress(stored: impl Read, sink: impl Write + Send) -> Result<Compressed> {
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
        let read = inflate_members(
            &mut reader,
            |buf| tx.send(buf).is_ok(),
            || back_rx.try_recv().unwrap_or_default(),
        );
        drop(tx);
        (read, writer.join().expect("decompress writer thread"))
    });
    read.context("not a valid gzip stream")?;
    let raw = written.context("writing the decompressed content")?;
    Ok(Compressed {
        raw,
        stored: reader.finish(),
    })
}

/// Inflate every gzip member of `r`, handing the content to `send` in order (until it returns
/// false: the receiver stopped, and its error is the one to report). `spare` gives a buffer
/// to reuse.
fn inflate_members(
    r: &mut impl Read,
    mut send: impl FnMut(Vec<u8>) -> bool,
    mut spare: impl FnMut() -> Vec<u8>,
) -> Result<()> {
    let mut inflater = libdeflater::Decompressor::new();
    let mut member = Vec::new();
    let mut first = true;
    loop {
        let mut head = [0u8; HEADER_LEN];
        let got = read_full(r, &mut head)?;
        if got == 0 && !first {
            return Ok(());
        }
        first = false;
        let ours = got == HEADER_LEN && head[..HEADER.len()] == HEADER;
        if !ours {
            // Not one of ours: inflate the rest as a stream of stock gzip members.
            let mut dec = flate2::read::MultiGzDecoder::new(io::Cursor::new(head[..got].to_vec()).chain(r));
            loop {
                let mut buf = spare();
                fill(&mut dec, &mut buf, BLOCK)?;
                if buf.is_empty() || !send(buf) {
                    return Ok(());
                }
            }
        }
        let total = u32::from_le_bytes(head[HEADER.len()..].try_into().expect("4 bytes")) as usize;
        if total < HEADER_LEN + TRAILER_LEN {
            bail!("gzip member of {total} bytes is shorter than its header");
        }
        member.resize(total - HEADER_LEN, 0);
        if read_full(r, &mut member)? != member.len() {
            bail!("truncated gzip member");
        }
        let (deflated, trailer) = member.split_at(member.len() - TRAILER_LEN);
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes")) as usize;
        if size > MEMBER_RAW_MAX {
            bail!("gzip member claims {size} bytes of content, more than guard writes");
        }
        let mut buf = spare();
        buf.resize(size, 0);
        let n = inflater
            .deflate_decompress(deflated, &mut buf)
            .map_err(|e| anyhow!("corrupt deflate data ({e:?})"))?;
        if n != size {
            bail!("gzip member inflates to {n} bytes, its trailer says {size}");
        }
        if crc32fast::hash(&buf) != crc {
            bail!("gzip member fails its CRC-32 check");
        }
        if !send(buf) {
            return Ok(());
        }
    }
}

/// Read until `buf` is full or the input ends; how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
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
        for level in 0..=9 {
            roundtrip(&data, 1 + level as usize % 3, level);
            roundtrip(b"", 1, level);
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let c = Compression {
            level: 6,
            threads: 2,
            level_set: true,
        };
        compress(Cursor::new(data.to_vec()), Vec::new(), c).unwrap().1
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let data: Vec<u8> = (0..3 * BLOCK as u32 / 2)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let good = gz(&data);
        assert!(decompress(&good[..], io::sink()).is_ok());
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        cases.push(("truncated", good[..good.len() - 3].to_vec()));
        cases.push(("cut at a member boundary", good[..HEADER_LEN].to_vec()));
        cases.push(("empty", Vec::new()));
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 5000] ^= 0x10;
        cases.push(("a flipped bit in the deflate data", flipped));
        let mut crc = good.clone();
        let first_len = u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
        crc[first_len - 8] ^= 1;
        cases.push(("a wrong CRC-32", crc));
        let mut len = good.clone();
        len[16] ^= 4;
        cases.push(("a wrong member length", len));
        let mut tail = good.clone();
        tail.extend_from_slice(b"not gzip");
        cases.push(("garbage after the last member", tail));
        for (what, bytes) in cases {
            assert!(decompress(&bytes[..], io::sink()).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn members_are_one_per_block_and_say_their_length() {
        let data = vec![42u8; 2 * BLOCK + 10];
        let g = gz(&data);
        let mut at = 0;
        let mut members = 0;
        while at < g.len() {
            assert_eq!(g[at..at + HEADER.len()], HEADER);
            at += u32::from_le_bytes(g[at + 16..at + 20].try_into().unwrap()) as usize;
            members += 1;
        }
        assert_eq!((at, members), (g.len(), 3));
        // Empty input is one empty member: a valid gzip file.
        let empty = gz(b"");
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
        assert_eq!(decompress(&empty[..], io::sink()).unwrap().raw.bytes, 0);
    }

    #[test]
    fn a_block_that_does_not_inflate_to_its_input_is_refused() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut d = Deflater::new(6).unwrap();
        let member = d.member(0, &data).unwrap();
        let deflated = &member[HEADER_LEN..member.len() - TRAILER_LEN];
        d.prove(0, deflated, &data).unwrap();
        let mut other = data.clone();
        other[1234] ^= 1;
        assert!(d.prove(0, deflated, &other).is_err(), "different content");
        assert!(
            d.prove(0, deflated, &data[..data.len() - 1]).is_err(),
            "shorter content"
        );
        let mut bad = deflated.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(d.prove(0, &bad, &data).is_err(), "damaged deflate data");
    }

    #[test]
    fn stock_gzip_streams_still_decompress() {
        // Artifacts made by hand (or by guard before members carried their length).
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut stock = Vec::new();
        for part in [&data[..1_000_000], &data[1_000_000..]] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(part).unwrap();
            stock.extend(e.finish().unwrap());
        }
        let mut back = Vec::new();
        let d = decompress(&stock[..], &mut back).unwrap();
        assert!(back == data);
        assert_eq!(d.raw.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(d.stored.sha256, hex::encode(Sha256::digest(&stock)));
        // One of ours followed by a stock member reads as one stream too.
        let mut mixed = gz(&data[..5000]);
        mixed.extend_from_slice(&stock);
        let mut back = Vec::new();
        decompress(&mixed[..], &mut back).unwrap();
        assert!(back[..5000] == data[..5000] && back[5000..] == data[..]);
    }
}
