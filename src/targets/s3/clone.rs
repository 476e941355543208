//! A snapshot's clones: every object of the bucket copied into the clone bucket (or an earlier
//! clone reused), each copy checked against the listing, rounds of copies until a listing shows
//! nothing new.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use aws_sdk_s3::Client;
use sha2::{Digest as _, Sha256};

use super::copy::{copy_object, Copied, CopyReq};
use super::listing::{list_all, plan, Listed, ObjectEntry, Plan};
use super::objects::{delete_keys, get_tags, object_sha256};
use super::tasks::{bounded, concurrency};
use super::wire::{is_raced, read_error, unquote};
use super::S3Tags;
use super::{S3Target, Stats};
use crate::aws::status_of;

/// Source listings a snapshot may take before it gives up on objects that keep changing: the
/// first, then one after each round of copies.
pub(super) const MAX_LISTINGS: u64 = 5;

/// What a snapshot shares between the copies of one round.
struct CloneCtx {
    c: Client,
    bucket: String,
    clone_bucket: String,
    clone_prefix: String,
    snapshot_id: String,
    exact_tags: bool,
    /// Encryption of the clones written (`sse`).
    sse: Option<crate::aws::Sse>,
    /// The clone prefix as listed when the snapshot started.
    clones: HashMap<String, Listed>,
    /// The previous snapshot's entries, by key.
    prev: HashMap<String, ObjectEntry>,
    /// Clone keys this snapshot wrote (so none is written twice).
    made: Mutex<HashSet<String>>,
}

impl CloneCtx {
    /// `key`, or (when a clone is listed there or this snapshot wrote it) a key of this
    /// snapshot's own beside it.
    fn claim(&self, key: String) -> String {
        let mut made = self.made.lock().expect("made");
        let mut k = key.clone();
        let mut n = 1;
        while self.clones.contains_key(&k) || made.contains(&k) {
            k = if n == 1 {
                format!("{key}-{}", self.snapshot_id)
            } else {
                format!("{key}-{}-{n}", self.snapshot_id)
            };
            n += 1;
        }
        made.insert(k.clone());
        k
    }
}

/// What one object's turn in a round gave.
enum Cloned {
    Entry(Box<ObjectEntry>, Stats),
    /// The object changed (or went) between its listing and its copy; the next listing decides.
    Raced(Stats),
}

/// Whether a server-side copy holds the listed version `o` of its source: the copy's ETag is
/// the listed one (a copy keeps a single-part object's MD5 ETag), or — where ETags of a copy
/// and its source differ by design (a multipart source, KMS encryption) — the source still
/// shows exactly the listed ETag, size and Last-Modified after the copy, so no write reached it
/// in between. Where the SHA-256 of the listed version is known (an earlier snapshot recorded
/// it) the copy's, when the server returned it, must be that too. `bucket/key` is the source.
async fn copy_matches(
    c: &Client,
    bucket: &str,
    o: &Listed,
    copied: &Copied,
    known_sha256: Option<&str>,
) -> Result<bool> {
    if let (Some(got), Some(want)) = (copied.sha256.as_deref(), known_sha256) {
        if got != want {
            return Ok(false);
        }
    }
    if copied.etag == o.etag {
        return Ok(true);
    }
    match c.head_object().bucket(bucket).key(&o.key).send().await {
        Ok(h) => Ok(unquote(h.e_tag().unwrap_or_default()) == o.etag
            && h.content_length().unwrap_or(-1) == o.size as i64
            && h.last_modified().map(|t| t.secs()) == Some(o.modified)),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(read_error(bucket, &o.key, e)),
    }
}

/// One object's turn: reuse, adopt or copy its clone; a copy is checked against the listing.
async fn clone_one(cx: Arc<CloneCtx>, o: Listed) -> Result<Cloned> {
    let c = &cx.c;
    let mut st = Stats::default();
    let key_hash = hex::encode(Sha256::digest(o.key.as_bytes()));
    let base = format!(
        "{}{}/{}-{}-{}",
        cx.clone_prefix,
        &key_hash[..32],
        o.etag,
        o.size,
        o.modified
    );
    let prev = cx.prev.get(&o.key);
    let plan = plan(&o, prev, &cx.clones, base, &cx.snapshot_id);
    // A clone found only by its key may predate `sse` (unencrypted): with encryption asked for,
    // the object is copied anew beside it.
    let plan = match plan {
        Plan::Adopt(key) if cx.sse.is_some() => Plan::Copy(key),
        p => p,
    };
    // With exact tags, an object copied now needs no read: the copy carries the tag set it has
    // at this moment (TaggingDirective COPY), so the listing leaves `tags` out and restore takes
    // them from the clone. A reused clone may carry older tags: read the object's current set.
    let tags = if cx.exact_tags && !matches!(plan, Plan::Copy(_)) {
        match get_tags(c, &cx.bucket, &o.key).await {
            Ok(t) => Some(t),
            Err(e) if is_raced(&e) => return Ok(Cloned::Raced(st)),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let (clone_key, clone_etag, cloned, (sha256, from)) = match plan {
        Plan::Reuse(p) => {
            st.reused += 1;
            return Ok(Cloned::Entry(Box::new(ObjectEntry { tags, ..p }), st));
        }
        Plan::Adopt(key) => {
            st.reused += 1;
            let cl = &cx.clones[&key];
            let sha = object_sha256(c, &cx.clone_bucket, &key, &cl.etag, cl.size).await?;
            (key, cl.etag.clone(), cl.modified, sha)
        }
        Plan::Copy(key) => {
            let key = cx.claim(key);
            let copied = match copy_object(
                c,
                &CopyReq {
                    src_bucket: &cx.bucket,
                    src_key: &o.key,
                    src_etag: &o.etag,
                    size: o.size,
                    attrs: None,
                    dst_bucket: &cx.clone_bucket,
                    dst_key: &key,
                    sse: cx.sse.as_ref(),
                },
            )
            .await
            {
                Ok(x) => x,
                Err(e) if is_raced(&e) => return Ok(Cloned::Raced(st)),
                Err(e) => return Err(e),
            };
            st.copied += 1;
            st.copied_bytes += o.size;
            let known = prev
                .filter(|p| p.etag == o.etag && p.size == o.size)
                .map(|p| p.sha256.as_str());
            if !copy_matches(c, &cx.bucket, &o, &copied, known).await? {
                st.copy_mismatches += 1;
                return Ok(Cloned::Raced(st));
            }
            let sha = match copied.sha256 {
                Some(s) => (s, "server"),
                None => object_sha256(c, &cx.clone_bucket, &key, &copied.etag, o.size).await?,
            };
            (key, copied.etag, copied.modified, sha)
        }
    };
    if from == "server" {
        st.server_checksums += 1;
    } else {
        st.hashed += 1;
    }
    Ok(Cloned::Entry(
        Box::new(ObjectEntry {
            key: o.key,
            size: o.size,
            etag: o.etag,
            modified: o.modified,
            sha256,
            sha256_from: from.to_string(),
            tags,
            clone_key,
            clone_etag,
            cloned,
        }),
        st,
    ))
}

impl S3Target {
    /// Clone every object that has no usable clone yet; returns the listing and what it cost.
    ///
    /// The snapshot is the bucket as one listing shows it: after a round of copies the source is
    /// listed again, and every object whose key, size, ETag or Last-Modified differ from its
    /// entry (or that is new, or whose copy did not match its listing) gets another round;
    /// objects gone since are dropped. When a listing shows nothing new the snapshot is that
    /// listing, every clone proven to be the listed version. After [`MAX_LISTINGS`] listings
    /// that still differ, the snapshot fails naming the objects that kept changing.
    pub(super) async fn clone_all(
        &self,
        c: Client,
        clone_prefix: String,
        snapshot_id: String,
        previous: Vec<ObjectEntry>,
    ) -> Result<(Vec<ObjectEntry>, Stats)> {
        let s3 = &self.s3;
        let mut todo = list_all(&c, &s3.bucket, &s3.prefix).await?;
        crate::faults::test_pause("s3-listed");
        let clones: HashMap<String, Listed> = list_all(&c, &s3.clone_bucket, &clone_prefix)
            .await?
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        let cx = Arc::new(CloneCtx {
            c: c.clone(),
            bucket: s3.bucket.clone(),
            clone_bucket: s3.clone_bucket.clone(),
            clone_prefix,
            snapshot_id,
            exact_tags: s3.tags == S3Tags::Exact,
            sse: s3.sse.clone(),
            clones,
            prev: previous.into_iter().map(|e| (e.key.clone(), e)).collect(),
            made: Mutex::new(HashSet::new()),
        });
        let mut entries: HashMap<String, ObjectEntry> = HashMap::new();
        let mut total = Stats {
            listings: 1,
            ..Default::default()
        };
        let result = async {
            loop {
                let round = bounded(todo, concurrency(), {
                    let cx = Arc::clone(&cx);
                    move |o: Listed| clone_one(Arc::clone(&cx), o)
                })
                .await?;
                for r in round {
                    let st = match r {
                        Cloned::Entry(e, st) => {
                            entries.insert(e.key.clone(), *e);
                            st
                        }
                        Cloned::Raced(st) => st,
                    };
                    if total.listings > 1 {
                        total.recopied += st.copied;
                    }
                    total.add(&st);
                }
                let now = list_all(&c, &s3.bucket, &s3.prefix).await?;
                total.listings += 1;
                crate::faults::test_pause("s3-listed");
                let live: HashSet<&str> = now.iter().map(|o| o.key.as_str()).collect();
                entries.retain(|k, _| live.contains(k.as_str()));
                let changed: Vec<Listed> = now
                    .iter()
                    .filter(|o| !entries.get(&o.key).is_some_and(|e| e.same_object(o)))
                    .cloned()
                    .collect();
                if changed.is_empty() {
                    return Ok(());
                }
                if total.listings >= MAX_LISTINGS {
                    let n = changed.len();
                    let shown: Vec<&str> = changed.iter().take(10).map(|o| o.key.as_str()).collect();
                    bail!(
                        "{n} object(s) under s3://{}/{} kept changing while guard copied them ({} listings, each differing from the copies before it): {}{}; stop writers with a `before` hook and retry",
                        s3.bucket,
                        s3.prefix,
                        total.listings,
                        shown.join(", "),
                        if n > 10 { ", …" } else { "" }
                    );
                }
                todo = changed;
            }
        }
        .await;
        // Clones this snapshot wrote that its listing does not name (copies that did not match
        // their listing, versions superseded by a later round) hold nothing anyone needs.
        let named: HashSet<&str> = entries.values().map(|e| e.clone_key.as_str()).collect();
        let stray: Vec<String> = cx
            .made
            .lock()
            .expect("made")
            .iter()
            .filter(|k| !named.contains(k.as_str()))
            .cloned()
            .collect();
        if result.is_ok() && !stray.is_empty() {
            if let Err(e) = delete_keys(&c, &s3.clone_bucket, &stray, "stray clone(s)").await {
                crate::errln!(
                    "guard: warning: {}: could not delete {} clone(s) that no snapshot uses: {e:#}",
                    self.spec.name,
                    stray.len()
                );
            }
        }
        result?;
        let mut entries: Vec<ObjectEntry> = entries.into_values().collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((entries, total))
    }

    /// SHA-256 of live objects, reusing what listings already told us for unchanged ones.
    pub(super) async fn live_hashes(&self, c: &Client, live: Vec<Listed>) -> Result<Vec<(String, String)>> {
        let known = Arc::new(self.known.lock().expect("known").clone());
        let bucket = self.s3.bucket.clone();
        let mut out = bounded(live, concurrency(), move |o: Listed| {
            let (c, known, bucket) = (c.clone(), Arc::clone(&known), bucket.clone());
            async move {
                if let Some(s) = known.get(&(o.key.clone(), o.etag.clone(), o.size)) {
                    return Ok((o.key, s.clone()));
                }
                let (sha, _) = object_sha256(&c, &bucket, &o.key, &o.etag, o.size).await?;
                Ok((o.key, sha))
            }
        })
        .await?;
        out.sort();
        Ok(out)
    }
}
