//! Restore: copy back what differs from the snapshot's listing, delete what it did not have, put
//! tag sets back; then prove the bucket equals the listing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use super::copy::{
    bounded, concurrency, copy_object, delete_keys, get_tags, object_sha256, read_attrs, set_tags, snapshot_tags,
};
use super::listing::{exact_tags, list_all, summarize, Attrs, Listed, ObjectEntry};
use super::S3Target;
use crate::manifest::TargetRecord;
use crate::runtime::wait;
use crate::store::Store;

/// A listing a restore read, and what it put back: key → the attributes the object must now have.
pub(super) type RestoredListing = (Arc<Vec<ObjectEntry>>, HashMap<String, Attrs>);

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
        let c = self.client();
        let s3 = self.s3.clone();
        let listing = Arc::clone(&entries);
        let exact = exact_tags(rec);
        let confirmed = wait(async move {
            // Every clone must be there before anything live is touched.
            let clone_prefix = rec.meta.get("clone_prefix").cloned().unwrap_or_default();
            let clones: HashMap<String, (u64, String)> = list_all(&c, &s3.clone_bucket, &clone_prefix)
                .await?
                .into_iter()
                .map(|l| (l.key, (l.size, l.etag)))
                .collect();
            let missing: Vec<String> = entries
                .iter()
                .filter(|e| clones.get(&e.clone_key).map(|(n, _)| *n != e.size).unwrap_or(true))
                .map(|e| format!("s3://{}/{}", s3.clone_bucket, e.clone_key))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "{} clone object(s) missing or replaced, nothing was changed: {}",
                    missing.len(),
                    missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let live = list_all(&c, &s3.bucket, &s3.prefix).await?;
            let live_map: HashMap<&str, &Listed> = live.iter().map(|l| (l.key.as_str(), l)).collect();
            let wanted: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            // Same key, size, ETag and Last-Modified as a settled entry: the object's bytes and
            // metadata are the snapshot's and it is left alone (its tag set is put back when
            // the snapshot read it). Everything else is copied back from its clone.
            let (same, put_back): (Vec<ObjectEntry>, Vec<ObjectEntry>) = entries
                .iter()
                .cloned()
                .partition(|e| e.settled() && live_map.get(e.key.as_str()).is_some_and(|l| e.same_object(l)));
            let (c2, b2) = (c.clone(), s3.bucket.clone());
            let tagged: Vec<ObjectEntry> = same.into_iter().filter(|e| exact || e.tags.is_some()).collect();
            let cb = s3.clone_bucket.clone();
            bounded(tagged, concurrency(), move |e: ObjectEntry| {
                let (c, b, cb) = (c2.clone(), b2.clone(), cb.clone());
                async move {
                    let want = snapshot_tags(&c, &cb, &e, exact).await?.expect("exact or recorded");
                    if get_tags(&c, &b, &e.key).await? != want {
                        set_tags(&c, &b, &e.key, &want).await?;
                    }
                    Ok(())
                }
            })
            .await?;
            let (c2, s2) = (c.clone(), s3.clone());
            let put_back: HashMap<String, Attrs> = bounded(put_back, concurrency(), move |e: ObjectEntry| {
                let (c, s3) = (c2.clone(), s2.clone());
                async move {
                    // The clone carries the object's content-type and metadata (and its tags,
                    // unless the snapshot read them itself).
                    let (mut attrs, _, _, _) =
                        read_attrs(&c, &s3.clone_bucket, &e.clone_key, Some(&e.clone_etag)).await?;
                    if let Some(t) = &e.tags {
                        attrs.tags = t.clone();
                    }
                    let copied = copy_object(
                        &c,
                        &s3.clone_bucket,
                        &e.clone_key,
                        &e.clone_etag,
                        e.size,
                        Some(&attrs),
                        &s3.bucket,
                        &e.key,
                    )
                    .await?;
                    if let Some(sha) = copied.sha256 {
                        if sha != e.sha256 {
                            bail!(
                                "s3://{}/{}: the restored copy's SHA-256 {sha} is not the snapshot's {}",
                                s3.bucket,
                                e.key,
                                e.sha256
                            );
                        }
                    }
                    // Set the tag set explicitly: some servers keep an overwritten key's old
                    // tags when the copy brings none.
                    set_tags(&c, &s3.bucket, &e.key, &attrs.tags).await?;
                    Ok((e.key, attrs))
                }
            })
            .await?
            .into_iter()
            .collect();
            let extra: Vec<String> = live
                .iter()
                .filter(|l| !wanted.contains(l.key.as_str()))
                .map(|l| l.key.clone())
                .collect();
            delete_keys(&c, &s3.bucket, &extra, "object(s) created since the snapshot").await?;
            Ok(put_back)
        })
        .with_context(|| format!("restoring {}", self.where_()))?;
        self.restored
            .lock()
            .expect("restored")
            .insert(a.sha256.clone(), (listing, confirmed));
        Ok(())
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
        let c = self.client();
        let s3 = self.s3.clone();
        let exact = exact_tags(rec);
        wait(async move {
            let live = list_all(&c, &s3.bucket, &s3.prefix).await?;
            let live_map: HashMap<String, Listed> = live.into_iter().map(|l| (l.key.clone(), l)).collect();
            let mut diffs = Vec::new();
            let wanted: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            for k in live_map.keys() {
                if !wanted.contains(k.as_str()) {
                    diffs.push(format!("{k}: not in the snapshot"));
                }
            }
            // What each object must be now: a put-back object its clone's attributes and the
            // snapshot's content; a left-alone one its snapshot identity (and tag set).
            let mut to_check = Vec::new();
            for e in entries.iter() {
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
        })
    }
}
