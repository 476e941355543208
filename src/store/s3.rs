//! A store in an S3 bucket (any S3-compatible server), and the S3 client every S3 part of
//! guard shares.
//!
//! Keys map to `s3://BUCKET/PREFIX/KEY`. Writes stream: an [`Upload`] buffers one part
//! (8 MiB), uploads parts of a multipart upload as they fill (two in flight at most, so memory
//! stays bounded and nothing is staged on disk), and `commit` completes the upload: only then
//! does the object appear under its key. A dropped upload is aborted. Objects smaller than a
//! part are written with one PutObject on commit, which is just as atomic.
//!
//! The store-wide lock is a lease object `locks/<policy>.lock` created with a conditional
//! write (`If-None-Match: *`), renewed (`If-Match` on its ETag) while it is held, and deleted
//! (`If-Match`) on release. A lease whose expiry has passed, or whose holder ran on this host
//! and is no longer alive, is taken over with an `If-Match` write, so exactly one taker wins.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};

use super::{Entry, Store, Upload};
use crate::runtime::wait;

/// Size of the parts of a streamed upload.
const PART: usize = 8 << 20;
/// Parts uploading at once per upload.
const PARTS_IN_FLIGHT: usize = 2;

/// A client for `endpoint` (or the standard chain's) and `region` (or the chain's, else
/// `us-east-1`). Credentials come from the standard AWS chain (environment, profile, …).
/// A custom endpoint (the target's `endpoint`, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`) is
/// addressed path-style, which every S3-compatible server understands. Clients are cached.
pub fn client(endpoint: Option<&str>, region: Option<&str>) -> Client {
    type Key = (Option<String>, Option<String>);
    static CLIENTS: OnceLock<Mutex<Vec<(Key, Client)>>> = OnceLock::new();
    let id = (endpoint.map(str::to_string), region.map(str::to_string));
    let cache = CLIENTS.get_or_init(|| Mutex::new(Vec::new()));
    if let Some((_, c)) = cache.lock().expect("client cache").iter().find(|(k, _)| *k == id) {
        return c.clone();
    }
    let c = wait(async {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        if let Some(ep) = endpoint.map(str::to_string).or(env_endpoint) {
            b = b.endpoint_url(ep).force_path_style(true);
        }
        Client::from_conf(b.build())
    });
    cache.lock().expect("client cache").push((id, c.clone()));
    c
}

/// An SDK error as a message naming what was attempted, the HTTP status and the S3 error code.
pub fn sdk_error<E>(what: impl std::fmt::Display, e: SdkError<E, HttpResponse>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    match (status, e.code()) {
        (Some(s), Some(code)) => anyhow!(
            "{what}: HTTP {s} {code}{}",
            e.message().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        (Some(s), None) => anyhow!("{what}: HTTP {s}: {}", DisplayErrorContext(&e)),
        _ => anyhow!("{what}: {}", DisplayErrorContext(&e)),
    }
}

/// CompleteMultipartUpload `parts` of `bucket/key`, whose content must total `size` bytes.
/// Returns the object's ETag.
///
/// Some S3-compatible servers (moto) answer 200 with an XML root the SDK refuses to parse. A
/// 200 whose body cannot be parsed is therefore confirmed with HeadObject: the object must
/// have the expected size and exactly the multipart ETag its parts imply (MD5 of the parts'
/// MD5s, `-N`); anything else is an error.
pub async fn complete_multipart(
    c: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
    size: u64,
) -> Result<String> {
    use md5::{Digest as _, Md5};
    let shown = format!("s3://{bucket}/{key}");
    let mut expected = Md5::new();
    let mut exact = true;
    for p in &parts {
        match hex::decode(p.e_tag().unwrap_or_default().trim_matches('"')) {
            Ok(b) if b.len() == 16 => expected.update(b),
            _ => exact = false,
        }
    }
    let expected = format!("{}-{}", hex::encode(expected.finalize()), parts.len());
    let n = parts.len();
    let r = c
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await;
    match r {
        Ok(r) => Ok(r.e_tag().unwrap_or_default().trim_matches('"').to_string()),
        Err(e) if status_of(&e) == Some(200) && e.code().is_none() => {
            let h = c
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| sdk_error(format!("{shown}: confirming the completed multipart upload"), e))?;
            let etag = h.e_tag().unwrap_or_default().trim_matches('"').to_string();
            let len = h.content_length().unwrap_or(-1);
            let etag_ok = if exact {
                etag == expected
            } else {
                etag.ends_with(&format!("-{n}"))
            };
            if len != size as i64 || !etag_ok {
                return Err(anyhow!(
                    "{shown}: completing the multipart upload failed ({}); the object there has {len} bytes and ETag {etag}, expected {size} bytes and ETag {expected}",
                    DisplayErrorContext(&e)
                ));
            }
            Ok(etag)
        }
        Err(e) => Err(sdk_error(format!("{shown}: completing the multipart upload failed"), e)),
    }
}

/// The HTTP status of a failed request, when the server answered.
pub fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// A store in `s3://bucket/prefix`.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// Open the store, checking the bucket answers.
    pub fn open(bucket: &str, prefix: &str) -> Result<S3Store> {
        let client = client(None, None);
        let s = S3Store {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        };
        wait(s.client.head_bucket().bucket(&s.bucket).send()).map_err(|e| {
            sdk_error(
                format!("store {}: bucket {} is not reachable", s.location(), s.bucket),
                e,
            )
        })?;
        Ok(s)
    }

    fn full(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("invalid store key {key:?}");
        }
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn where_(&self, key: &str) -> String {
        format!("{}/{key}", self.location())
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    shown: String,
    buf: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    sent: u64,
    in_flight: VecDeque<tokio::task::JoinHandle<Result<CompletedPart>>>,
    done: bool,
}

impl S3Upload {
    /// Send the buffered bytes as the next part (starting the multipart upload if needed).
    fn send_part(&mut self) -> Result<()> {
        if self.upload_id.is_none() {
            let r = wait(
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .send(),
            )
            .map_err(|e| sdk_error(format!("{}: cannot start a multipart upload", self.shown), e))?;
            self.upload_id = Some(
                r.upload_id()
                    .ok_or_else(|| anyhow!("{}: the server returned no upload id", self.shown))?
                    .to_string(),
            );
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_one()?;
        }
        let n = (self.parts.len() + self.in_flight.len() + 1) as i32;
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PART));
        self.sent += data.len() as u64;
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(self.upload_id.clone().expect("started"))
            .part_number(n)
            .body(ByteStream::from(data));
        let shown = self.shown.clone();
        self.in_flight.push_back(crate::runtime::handle().spawn(async move {
            let r = req
                .send()
                .await
                .map_err(|e| sdk_error(format!("{shown}: uploading part {n}"), e))?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(r.e_tag().map(str::to_string))
                .build())
        }));
        Ok(())
    }

    fn wait_one(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.pop_front() {
            let part = wait(h).map_err(|e| anyhow!("{}: part upload task failed: {e}", self.shown))??;
            self.parts.push(part);
        }
        Ok(())
    }
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PART - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PART {
            self.send_part().map_err(|e| io::Error::other(format!("{e:#}")))?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for S3Upload {
    fn commit(mut self: Box<Self>) -> Result<()> {
        if self.upload_id.is_none() {
            let data = std::mem::take(&mut self.buf);
            wait(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .body(ByteStream::from(data))
                    .send(),
            )
            .map_err(|e| sdk_error(format!("{}: upload failed", self.shown), e))?;
            self.done = true;
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_one()?;
        }
        self.parts.sort_by_key(|p| p.part_number());
        let id = self.upload_id.clone().expect("started");
        wait(complete_multipart(
            &self.client,
            &self.bucket,
            &self.key,
            &id,
            self.parts.clone(),
            self.sent,
        ))
        .map_err(|e| anyhow!("{}: {e:#}", self.shown))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        if let Some(id) = self.upload_id.take() {
            // Nothing was ever visible under the key; this frees the parts already uploaded.
            let _ = wait(
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(id)
                    .send(),
            );
        }
    }
}

/// GetObject's body as a blocking reader.
struct S3Reader {
    body: ByteStream,
    chunk: bytes_chunk::Chunk,
    shown: String,
    expected: Option<u64>,
    got: u64,
}

mod bytes_chunk {
    /// The unread rest of the last chunk received.
    #[derive(Default)]
    pub struct Chunk {
        pub data: Vec<u8>,
        pub pos: usize,
    }
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.pos == self.chunk.data.len() {
            match wait(self.body.try_next()) {
                Ok(Some(b)) => {
                    self.chunk.data = b.to_vec();
                    self.chunk.pos = 0;
                }
                Ok(None) => {
                    if let Some(n) = self.expected {
                        if self.got != n {
                            return Err(io::Error::other(format!(
                                "{}: body ended after {} of {n} bytes",
                                self.shown, self.got
                            )));
                        }
                    }
                    return Ok(0);
                }
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "{}: reading failed: {}",
                        self.shown,
                        DisplayErrorContext(&e)
                    )))
                }
            }
        }
        let n = out.len().min(self.chunk.data.len() - self.chunk.pos);
        out[..n].copy_from_slice(&self.chunk.data[self.chunk.pos..self.chunk.pos + n]);
        self.chunk.pos += n;
        self.got += n as u64;
        Ok(n)
    }
}

impl Store for S3Store {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        let full = self.full(key)?;
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full,
            shown: self.where_(key),
            buf: Vec::with_capacity(PART),
            upload_id: None,
            parts: Vec::new(),
            sent: 0,
            in_flight: VecDeque::new(),
            done: false,
        }))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let full = self.full(key)?;
        let r = wait(self.client.get_object().bucket(&self.bucket).key(&full).send())
            .map_err(|e| sdk_error(format!("cannot open {}", self.where_(key)), e))?;
        let expected = r.content_length().map(|n| n as u64);
        Ok(Box::new(S3Reader {
            body: r.body,
            chunk: Default::default(),
            shown: self.where_(key),
            expected,
            got: 0,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let full = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        while let Some(page) = wait(pages.next()) {
            let page = page.map_err(|e| sdk_error(format!("cannot list {}", self.where_(prefix)), e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&strip) else {
                    continue;
                };
                out.push(Entry {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full(key)?;
        match wait(self.client.head_object().bucket(&self.bucket).key(&full).send()) {
            Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(sdk_error(format!("cannot stat {}", self.where_(key)), e)),
        }
    }

    fn remove(&self, key: &str) -> Result<()> {
        let full = self.full(key)?;
        match wait(self.client.delete_object().bucket(&self.bucket).key(&full).send()) {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(sdk_error(format!("cannot remove {}", self.where_(key)), e)),
        }
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn as_s3(&self) -> Option<&S3Store> {
        Some(self)
    }
}

// ---------------------------------------------------------------------------------------------
// The store-wide lease lock.

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseBody {
    /// The guard holding the lock (lock.rs's `Holder` as JSON).
    holder: serde_json::Value,
    host: String,
    pid: u32,
    /// Unix seconds after which the lease is stale unless renewed.
    expires: i64,
}

/// A held lease; released (deleted if still ours) on drop, renewed meanwhile.
pub struct Lease {
    client: Client,
    bucket: String,
    key: String,
    etag: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
    pub location: String,
}

/// The outcome of trying to take a lease.
pub enum LeaseOutcome {
    /// Ours; `taken_over` is the stale holder it replaced.
    Acquired {
        lease: Lease,
        taken_over: Option<serde_json::Value>,
    },
    /// Held by a live holder.
    Held {
        holder: Option<serde_json::Value>,
        expires: i64,
    },
}

fn lease_ttl() -> i64 {
    std::env::var("GUARD_S3_LOCK_TTL")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &i64| n >= 3)
        .unwrap_or(300)
}

fn pid_alive(pid: u32) -> bool {
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl LeaseBody {
    /// Why this lease no longer protects anything, or `None` when its holder is alive.
    fn stale(&self) -> Option<String> {
        let now = crate::clock::now().unix_timestamp();
        if self.expires < now {
            return Some(format!("its lease expired {}s ago without renewal", now - self.expires));
        }
        if self.host == crate::clock::hostname() && !pid_alive(self.pid) {
            return Some(format!("process {} no longer runs on this host", self.pid));
        }
        None
    }
}

impl S3Store {
    fn lease_body(&self, holder: &serde_json::Value) -> Vec<u8> {
        let b = LeaseBody {
            holder: holder.clone(),
            host: crate::clock::hostname(),
            pid: std::process::id(),
            expires: crate::clock::now().unix_timestamp() + lease_ttl(),
        };
        serde_json::to_vec(&b).expect("serializes")
    }

    /// Read a lease object: `(body, etag)`, or `None` when there is none.
    fn read_lease(&self, full: &str, shown: &str) -> Result<Option<(Option<LeaseBody>, String)>> {
        let r = match wait(self.client.get_object().bucket(&self.bucket).key(full).send()) {
            Ok(r) => r,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(sdk_error(format!("cannot read the lock {shown}"), e)),
        };
        let etag = r.e_tag().unwrap_or_default().to_string();
        let bytes = wait(r.body.collect())
            .map_err(|e| anyhow!("cannot read the lock {shown}: {e}"))?
            .into_bytes();
        Ok(Some((serde_json::from_slice(&bytes).ok(), etag)))
    }

    /// Take the lease `key` for `holder`, or say who holds it.
    pub fn lease(&self, key: &str, holder: &serde_json::Value) -> Result<LeaseOutcome> {
        let full = self.full(key)?;
        let shown = self.where_(key);
        for _ in 0..5 {
            let put = wait(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .if_none_match("*")
                    .body(ByteStream::from(self.lease_body(holder)))
                    .send(),
            );
            let (etag, taken_over) = match put {
                Ok(r) => (r.e_tag().unwrap_or_default().to_string(), None),
                Err(e) if matches!(status_of(&e), Some(412) | Some(409)) => {
                    let Some((body, etag)) = self.read_lease(&full, &shown)? else {
                        continue;
                    };
                    let Some(body) = body else {
                        bail!("the lock {shown} exists but is not a guard lease; refusing to run (delete it if no guard is running)");
                    };
                    if body.stale().is_none() {
                        return Ok(LeaseOutcome::Held {
                            holder: Some(body.holder),
                            expires: body.expires,
                        });
                    }
                    let r = wait(
                        self.client
                            .put_object()
                            .bucket(&self.bucket)
                            .key(&full)
                            .if_match(&etag)
                            .body(ByteStream::from(self.lease_body(holder)))
                            .send(),
                    );
                    match r {
                        Ok(r) => {
                            let mut h = body.holder.clone();
                            if let (Some(why), Some(o)) = (body.stale(), h.as_object_mut()) {
                                o.insert("stale_because".into(), serde_json::Value::String(why));
                            }
                            (r.e_tag().unwrap_or_default().to_string(), Some(h))
                        }
                        Err(e) if matches!(status_of(&e), Some(412) | Some(404) | Some(409)) => continue,
                        Err(e) => return Err(sdk_error(format!("cannot take over the stale lock {shown}"), e)),
                    }
                }
                Err(e) => return Err(sdk_error(format!("cannot create the lock {shown}"), e)),
            };
            if etag.is_empty() {
                bail!("{shown}: the server returned no ETag for the lock; it cannot be held safely");
            }
            let etag = Arc::new(Mutex::new(etag));
            let stop = Arc::new(AtomicBool::new(false));
            let renewer = {
                let (client, bucket, full, etag, stop, holder, shown) = (
                    self.client.clone(),
                    self.bucket.clone(),
                    full.clone(),
                    Arc::clone(&etag),
                    Arc::clone(&stop),
                    holder.clone(),
                    shown.clone(),
                );
                let me = S3Store {
                    client: client.clone(),
                    bucket: bucket.clone(),
                    prefix: String::new(),
                };
                std::thread::spawn(move || {
                    let every = Duration::from_secs((lease_ttl() / 3).max(1) as u64);
                    loop {
                        let t = std::time::Instant::now();
                        while t.elapsed() < every {
                            if stop.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        let cur = etag.lock().expect("etag").clone();
                        let r = wait(
                            client
                                .put_object()
                                .bucket(&bucket)
                                .key(&full)
                                .if_match(&cur)
                                .body(ByteStream::from(me.lease_body(&holder)))
                                .send(),
                        );
                        match r {
                            Ok(r) => *etag.lock().expect("etag") = r.e_tag().unwrap_or_default().to_string(),
                            Err(e) if status_of(&e) == Some(412) || status_of(&e) == Some(404) => {
                                eprintln!("guard: warning: the lock {shown} was taken by someone else; another guard may now run this policy");
                                return;
                            }
                            Err(e) => eprintln!(
                                "guard: warning: {:#}",
                                sdk_error(format!("renewing the lock {shown}"), e)
                            ),
                        }
                    }
                })
            };
            let lease = Lease {
                client: self.client.clone(),
                bucket: self.bucket.clone(),
                key: full,
                etag,
                stop,
                renewer: Some(renewer),
                location: shown,
            };
            return Ok(LeaseOutcome::Acquired { lease, taken_over });
        }
        bail!("the lock {shown} keeps changing hands; try again")
    }

    /// Who holds the lease `key`, without taking it: `(held_by_a_live_guard, holder)`.
    pub fn inspect_lease(&self, key: &str) -> Result<(bool, Option<serde_json::Value>)> {
        let full = self.full(key)?;
        match self.read_lease(&full, &self.where_(key))? {
            None => Ok((false, None)),
            Some((None, _)) => Ok((true, None)),
            Some((Some(b), _)) => Ok((b.stale().is_none(), Some(b.holder))),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let etag = self.etag.lock().map(|e| e.clone()).unwrap_or_default();
        let r = wait(
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .if_match(etag)
                .send(),
        );
        if let Err(e) = r {
            if status_of(&e) != Some(412) && status_of(&e) != Some(404) {
                eprintln!(
                    "guard: warning: {:#}",
                    sdk_error(format!("releasing the lock {}", self.location), e)
                );
            }
        }
    }
}
