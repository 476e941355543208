//! A store in an S3 bucket (any S3-compatible server).
//!
//! Keys map to `s3://BUCKET/PREFIX/KEY`. Writes stream: an [`Upload`] buffers one part
//! (8 MiB), uploads parts of a multipart upload as they fill (two in flight at most, so memory
//! stays bounded and nothing is staged on disk), and `commit` completes the upload: only then
//! does the object appear under its key. A dropped upload is aborted. Objects smaller than a
//! part are written with one PutObject on commit, which is just as atomic.
//!
//! The store-wide lock is a lease object ([`lease`]). The client and SDK error handling are
//! shared with the S3 target ([`crate::aws`]).

mod lease;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedPart;
use aws_sdk_s3::Client;

use super::{Entry, Leaser, Store, Upload};
use crate::aws::{client, complete_multipart, sdk_error, status_of, Sse};
use crate::runtime::wait;

/// Size of the parts of a streamed upload.
const PART: usize = 8 << 20;
/// Parts uploading at once per upload.
const PARTS_IN_FLIGHT: usize = 2;

/// A store in `s3://bucket/prefix`.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// Server-side encryption asked for on every object written (`[store] sse`).
    sse: Option<Sse>,
}

impl S3Store {
    /// Open the store, checking the bucket answers.
    pub fn open(bucket: &str, prefix: &str, sse: Option<Sse>) -> Result<S3Store> {
        let client = client(None, None);
        let s = S3Store {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            sse,
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
    sse: Option<Sse>,
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
                    .set_server_side_encryption(Sse::header_of(self.sse.as_ref()))
                    .set_ssekms_key_id(Sse::key_of(self.sse.as_ref()))
                    .send(),
            )
            .map_err(|e| sdk_error(format!("{}: cannot start a multipart upload", self.shown), e))?;
            Sse::check(self.sse.as_ref(), r.server_side_encryption(), &self.shown)?;
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
            let r = wait(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .set_server_side_encryption(Sse::header_of(self.sse.as_ref()))
                    .set_ssekms_key_id(Sse::key_of(self.sse.as_ref()))
                    .body(ByteStream::from(data))
                    .send(),
            )
            .map_err(|e| sdk_error(format!("{}: upload failed", self.shown), e))?;
            if let Err(e) = Sse::check(self.sse.as_ref(), r.server_side_encryption(), &self.shown) {
                // Written, but not as asked: it must not stay under its key.
                let _ = wait(self.client.delete_object().bucket(&self.bucket).key(&self.key).send());
                return Err(e);
            }
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
            sse: self.sse.clone(),
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

    fn leaser(&self) -> Option<&dyn Leaser> {
        Some(self)
    }
}
