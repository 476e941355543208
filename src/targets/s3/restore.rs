//! Restore: copy back what differs from the snapshot's listing, delete what it did not have, put
//! tag sets back; then prove the bucket equals the listing.
//!
//! Each object is restored on its own: one that cannot be put back (its clone is missing or was
//! replaced, the server refuses it) does not stop the others, and the restore then names every
//! such key, after proving the rest. A server that stops answering stops the restore at once;
//! it then names what was and what was not put back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use super::copy::{copy_object, CopyReq};
use super::listing::{exact_tags, list_all, summarize, Attrs, Listed, ObjectEntry};
use super::objects::{delete_keys_each, get_tags, object_sha256, read_attrs, set_tags, snapshot_tags};
use super::tasks::{bounded, bounded_each, concurrency, Each};
use super::S3Spec;
use super::S3Target;
use crate::manifest::TargetRecord;
use crate::runtime::wait;
use crate::store::Store;
use aws_sdk_s3::Client;

/// A listing a restore read, and what it put back: key → the attributes the object must now have.
pub(super) type RestoredListing = (Arc<Vec<ObjectEntry>>, HashMap<String, Attrs>);

/// Keys named in full in a restore's error; beyond, only their number.
const NAMED_KEYS: usize = 1000;

/// What a restore did to the objects it had to touch.
struct Outcome {
    /// Objects copied back, with the attributes they must now have.
    put_back: HashMap<String, Attrs>,
    /// Objects that needed checking (tag sets), copying back or deleting.
    needed: usize,
    /// Keys that could not be restored, with why.
    failed: Vec<(String, String)>,
    /// The server stopped answering: why, and the keys not restored or not confirmed.
    stopped: Option<(String, Vec<String>)>,
}

/// What a restore has to do, each part on its own objects.
struct Todo {
    /// Objects that cannot come back (their clone is missing or short), with why.
    failed: Vec<(String, String)>,
    /// Objects whose bytes are the snapshot's; their tag sets are checked.
    tagged: Vec<ObjectEntry>,
    /// Objects copied back from their clones.
    to_copy: Vec<ObjectEntry>,
    /// Keys created since the snapshot, deleted.
    extra: Vec<String>,
}

/// Copy object `e` back from its clone, with the attributes and tag set it must have.
async fn copy_back_one(c: &Client, s3: &S3Spec, e: ObjectEntry) -> Result<(String, Attrs)> {
    // The clone carries the object's content-type and metadata (and its tags, unless the
    // snapshot read them itself).
    let (mut attrs, _, _, _) = read_attrs(c, &s3.clone_bucket, &e.clone_key, Some(&e.clone_etag)).await?;
    if let Some(t) = &e.tags {
        attrs.tags = t.clone();
    }
    let copied = copy_object(
        c,
        &CopyReq {
            src_bucket: &s3.clone_bucket,
            src_key: &e.clone_key,
            src_etag: &e.clone_etag,
            size: e.size,
            attrs: Some(&attrs),
            dst_bucket: &s3.bucket,
            dst_key: &e.key,
            // Written as the policy asks for what guard writes (`sse`); without it the live
            // bucket's own default encryption applies, as to any write there.
            sse: s3.sse.as_ref(),
        },
    )
    .await?;
    if let Some(sha) = copied.sha256 {
        if sha != e.sha256 {
            bail!(
                "the restored copy's SHA-256 {sha} is not the snapshot's {} (was its clone s3://{}/{} replaced?)",
                e.sha256,
                s3.clone_bucket,
                e.clone_key
            );
        }
    }
    // Set the tag set explicitly: some servers keep an overwritten key's old tags when the copy
    // brings none.
    set_tags(c, &s3.bucket, &e.key, &attrs.tags).await?;
    Ok((e.key, attrs))
}

fn key_of(e: &ObjectEntry) -> String {
    e.key.clone()
}

/// `keys` one per line, at most [`NAMED_KEYS`] of them.
fn named(keys: impl ExactSizeIterator<Item = String>) -> String {
    let n = keys.len();
    let mut out: Vec<String> = keys.take(NAMED_KEYS).map(|k| format!("  {k}")).collect();
    if n > NAMED_KEYS {
        out.push(format!("  … and {} more", n - NAMED_KEYS));
    }
    out.join("\n")
}

impl S3Target {
    /// Put the bucket back to the listing in `rec` (the body of [`Target::restore`]).
    pub(super) fn restore_bucket(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        if rec.absent {
            bail!(
                "target {}: bucket {} did not exist when the snapshot was taken; guard does not delete buckets",
                rec.name,
                self.s3.bucket
            );
        }
        let entries = Arc::new(self.read_listing(rec, store)?);
        let a = rec.artifacts.first().expect("read_listing checked");
        let exact = exact_tags(rec);
        let clone_prefix = rec.meta.get("clone_prefix").cloned().unwrap_or_default();
        let out = wait(self.put_back(Arc::clone(&entries), clone_prefix, exact))
            .with_context(|| format!("restoring {} (nothing was changed)", self.where_()))?;
        if out.failed.is_empty() && out.stopped.is_none() {
            self.restored
                .lock()
                .expect("restored")
                .insert(a.sha256.clone(), (entries, out.put_back));
            return Ok(());
        }
        let mut msg = format!("restoring {}: ", self.where_());
        if let Some((why, rest)) = &out.stopped {
            msg.push_str(&format!(
                "the S3 server stopped answering ({why}). Of the {} object(s) to check, put back or delete, {} were done; {} were not restored (or not confirmed):\n{}",
                out.needed,
                out.needed.saturating_sub(rest.len() + out.failed.len()),
                rest.len(),
                named(rest.iter().cloned())
            ));
            if !out.failed.is_empty() {
                msg.push_str(&format!(
                    "\n{} more object(s) could not be restored:\n{}",
                    out.failed.len(),
                    named(out.failed.iter().map(|(k, why)| format!("{k}: {why}")))
                ));
            }
            bail!("{msg}");
        }
        let skip: HashSet<String> = out.failed.iter().map(|(k, _)| k.clone()).collect();
        msg.push_str(&format!(
            "{} object(s) could not be restored:\n{}\n",
            out.failed.len(),
            named(out.failed.iter().map(|(k, why)| format!("{k}: {why}")))
        ));
        match wait(self.verify_listing(Arc::clone(&entries), out.put_back, &skip, exact)) {
            Ok(()) => msg.push_str("every other object was put back and matches the snapshot"),
            Err(e) => msg.push_str(&format!(
                "the other objects were put back, but do not all match the snapshot: {e:#}"
            )),
        }
        bail!("{msg}")
    }

    /// Copy back, re-tag and delete what differs from `entries`, each object on its own.
    async fn put_back(&self, entries: Arc<Vec<ObjectEntry>>, clone_prefix: String, exact: bool) -> Result<Outcome> {
        let c = self.client();
        let Todo {
            mut failed,
            tagged,
            to_copy,
            extra,
        } = self.todo(&entries, &clone_prefix, exact).await?;
        let needed = failed.len() + tagged.len() + to_copy.len() + extra.len();
        let mut stopped: Option<(String, Vec<String>)> = None;
        let mut stop = |e: anyhow::Error, rest: Vec<String>, later: &[String]| {
            let mut rest = rest;
            rest.extend(later.iter().cloned());
            match &mut stopped {
                None => stopped = Some((format!("{e:#}"), rest)),
                Some((_, r)) => r.extend(rest),
            }
        };
        let tags = self.retag(tagged, exact).await;
        failed.extend(
            tags.failed
                .into_iter()
                .map(|(k, e)| (k, format!("its tag set could not be put back: {e:#}"))),
        );
        let mut put_back = HashMap::new();
        if let Some((e, rest)) = tags.stopped {
            let later: Vec<String> = to_copy
                .iter()
                .map(|e| e.key.clone())
                .chain(extra.iter().cloned())
                .collect();
            stop(e, rest, &later);
        } else {
            let copies = self.copy_back(to_copy).await;
            put_back.extend(copies.done);
            failed.extend(copies.failed.into_iter().map(|(k, e)| (k, format!("{e:#}"))));
            if let Some((e, rest)) = copies.stopped {
                stop(e, rest, &extra);
            } else {
                let deletes = delete_keys_each(&c, &self.s3.bucket, &extra).await;
                failed.extend(deletes.failed.into_iter().map(|(k, e)| {
                    (
                        k,
                        format!("created since the snapshot, and could not be deleted: {e:#}"),
                    )
                }));
                if let Some((e, rest)) = deletes.stopped {
                    stop(e, rest, &[]);
                }
            }
        }
        failed.sort();
        Ok(Outcome {
            put_back,
            needed,
            failed,
            stopped,
        })
    }

    /// What a restore to `entries` has to do, from the clone and live listings.
    async fn todo(&self, entries: &[ObjectEntry], clone_prefix: &str, exact: bool) -> Result<Todo> {
        let c = self.client();
        let s3 = &self.s3;
        let clones: HashMap<String, (u64, String)> = list_all(&c, &s3.clone_bucket, clone_prefix)
            .await?
            .into_iter()
            .map(|l| (l.key, (l.size, l.etag)))
            .collect();
        let live = list_all(&c, &s3.bucket, &s3.prefix).await?;
        let mut failed: Vec<(String, String)> = Vec::new();
        // An object whose clone is not listed with its size cannot come back; every other one
        // still does.
        let available: Vec<ObjectEntry> = entries
            .iter()
            .filter(|e| match clones.get(&e.clone_key) {
                Some((n, _)) if *n == e.size => true,
                Some((n, _)) => {
                    failed.push((
                        e.key.clone(),
                        format!(
                            "its clone s3://{}/{} has {n} bytes, the snapshot {}",
                            s3.clone_bucket, e.clone_key, e.size
                        ),
                    ));
                    false
                }
                None => {
                    failed.push((
                        e.key.clone(),
                        format!("its clone s3://{}/{} is missing", s3.clone_bucket, e.clone_key),
                    ));
                    false
                }
            })
            .cloned()
            .collect();
        let live_map: HashMap<&str, &Listed> = live.iter().map(|l| (l.key.as_str(), l)).collect();
        let wanted: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        // Same key, size, ETag and Last-Modified as a settled entry: the object's bytes and
        // metadata are the snapshot's and it is left alone (its tag set is put back when the
        // snapshot read it). Everything else is copied back from its clone.
        let (same, to_copy): (Vec<ObjectEntry>, Vec<ObjectEntry>) = available
            .into_iter()
            .partition(|e| e.settled() && live_map.get(e.key.as_str()).is_some_and(|l| e.same_object(l)));
        Ok(Todo {
            failed,
            tagged: same.into_iter().filter(|e| exact || e.tags.is_some()).collect(),
            to_copy,
            extra: live
                .iter()
                .filter(|l| !wanted.contains(l.key.as_str()))
                .map(|l| l.key.clone())
                .collect(),
        })
    }

    /// Put back the tag sets of objects whose bytes are the snapshot's.
    async fn retag(&self, tagged: Vec<ObjectEntry>, exact: bool) -> Each<()> {
        let (c, b, cb) = (self.client(), self.s3.bucket.clone(), self.s3.clone_bucket.clone());
        bounded_each(tagged, concurrency(), key_of, move |e: ObjectEntry| {
            let (c, b, cb) = (c.clone(), b.clone(), cb.clone());
            async move {
                let want = snapshot_tags(&c, &cb, &e, exact).await?.expect("exact or recorded");
                if get_tags(&c, &b, &e.key).await? != want {
                    set_tags(&c, &b, &e.key, &want).await?;
                }
                Ok(())
            }
        })
        .await
    }

    /// Copy back every object of `to_copy` from its clone, each on its own.
    async fn copy_back(&self, to_copy: Vec<ObjectEntry>) -> Each<(String, Attrs)> {
        let (c, s3) = (self.client(), self.s3.clone());
        bounded_each(to_copy, concurrency(), key_of, move |e: ObjectEntry| {
            let (c, s3) = (c.clone(), s3.clone());
            async move { copy_back_one(&c, &s3, e).await }
        })
        .await
    }

    /// Prove the bucket equals the listing in `rec` (the body of [`Target::verify_restored`]).
    pub(super) fn verify_bucket(&self, rec: &TargetRecord) -> Result<()> {
        let a = rec
            .artifacts
            .first()
            .ok_or_else(|| anyhow!("snapshot of {} has no listing artifact", rec.name))?;
        let (entries, put_back) = self
            .restored
            .lock()
            .expect("restored")
            .get(&a.sha256)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "target {}: the snapshot's listing was not read; restore first",
                    rec.name
                )
            })?;
        wait(self.verify_listing(entries, put_back, &HashSet::new(), exact_tags(rec)))
    }

    /// Prove the bucket equals `entries`, apart from the keys in `skip` (live or listed): a
    /// put-back object has its clone's attributes (`put_back`) and the snapshot's content, a
    /// left-alone one its snapshot identity (and tag set).
    async fn verify_listing(
        &self,
        entries: Arc<Vec<ObjectEntry>>,
        put_back: HashMap<String, Attrs>,
        skip: &HashSet<String>,
        exact: bool,
    ) -> Result<()> {
        let c = self.client();
        let s3 = self.s3.clone();
        let live = list_all(&c, &s3.bucket, &s3.prefix).await?;
        let live_map: HashMap<String, Listed> = live.into_iter().map(|l| (l.key.clone(), l)).collect();
        let mut diffs = Vec::new();
        let wanted: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        for k in live_map.keys() {
            if !wanted.contains(k.as_str()) && !skip.contains(k) {
                diffs.push(format!("{k}: not in the snapshot"));
            }
        }
        let mut to_check = Vec::new();
        for e in entries.iter().filter(|e| !skip.contains(&e.key)) {
            match live_map.get(&e.key) {
                None => diffs.push(format!("{}: missing", e.key)),
                Some(l) if l.size != e.size => {
                    diffs.push(format!("{}: {} bytes, snapshot has {}", e.key, l.size, e.size))
                }
                Some(l) => match put_back.get(&e.key) {
                    Some(attrs) => to_check.push((e.clone(), l.etag.clone(), Some(attrs.clone()))),
                    None if !e.same_object(l) => {
                        diffs.push(format!("{}: changed since the restore left it alone", e.key))
                    }
                    None if exact || e.tags.is_some() => to_check.push((e.clone(), l.etag.clone(), None)),
                    None => {}
                },
            }
        }
        let (b, cb) = (s3.bucket.clone(), s3.clone_bucket.clone());
        type Check = (ObjectEntry, String, Option<Attrs>);
        let found = bounded(to_check, concurrency(), move |(e, live_etag, want): Check| {
            let (c, b, cb) = (c.clone(), b.clone(), cb.clone());
            async move {
                let mut d = Vec::new();
                let Some(want) = want else {
                    if Some(get_tags(&c, &b, &e.key).await?) != snapshot_tags(&c, &cb, &e, exact).await? {
                        d.push(format!("{}: tags differ", e.key));
                    }
                    return Ok(d);
                };
                let (attrs, server, _, _) = read_attrs(&c, &b, &e.key, Some(&live_etag)).await?;
                if live_etag != e.etag {
                    let sha = match server {
                        Some(s) => s,
                        None => object_sha256(&c, &b, &e.key, &live_etag, e.size).await?.0,
                    };
                    if sha != e.sha256 {
                        d.push(format!("{}: content differs (SHA-256)", e.key));
                    }
                }
                if attrs != want {
                    d.push(format!("{}: content-type, metadata or tags differ", e.key));
                }
                Ok(d)
            }
        })
        .await?;
        diffs.extend(found.into_iter().flatten());
        diffs.sort();
        summarize(diffs)
    }
}
