//! The store-wide lock of an S3 store: a lease object `locks/<policy>.lock` created with a
//! conditional write (`If-None-Match: *`), renewed (`If-Match` on its ETag) while it is held, and
//! deleted (`If-Match`) on release. A lease whose expiry has passed, or whose holder ran on this
//! host and is no longer alive, is taken over with an `If-Match` write, so exactly one taker wins.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};

use super::S3Store;
use crate::aws::{sdk_error, status_of, Sse};
use crate::runtime::wait;
use crate::store::{LeaseOutcome, Leaser};

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
}

type PutOutput = aws_sdk_s3::operation::put_object::PutObjectOutput;
type PutError = aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::put_object::PutObjectError>;

/// The condition a lease write is made under.
enum If<'a> {
    /// Only if there is no lock object yet (`If-None-Match: *`).
    Absent,
    /// Only if the lock object is still the one with this ETag (`If-Match`).
    Is(&'a str),
}

/// What one attempt at taking the lease found.
enum Attempt {
    /// Written: its ETag, and the holder of the stale lease taken over, if any.
    Took(String, Option<serde_json::Value>),
    /// Another guard's live lease.
    Held(LeaseOutcome),
    /// The lock object changed while we looked: try again.
    Raced,
}

impl S3Store {
    /// Write the lease object `full` for `holder`, under `cond`, encrypted as the store asks.
    /// (The SDK's own result: callers read its status.)
    #[allow(clippy::result_large_err)]
    fn put_lease(&self, full: &str, holder: &serde_json::Value, cond: If) -> Result<PutOutput, PutError> {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .set_server_side_encryption(Sse::header_of(self.sse.as_ref()))
            .set_ssekms_key_id(Sse::key_of(self.sse.as_ref()))
            .body(ByteStream::from(self.lease_body(holder)));
        let req = match cond {
            If::Absent => req.if_none_match("*"),
            If::Is(etag) => req.if_match(etag),
        };
        wait(req.send())
    }

    /// Create the lease, or take over a stale one.
    fn attempt(&self, full: &str, shown: &str, holder: &serde_json::Value) -> Result<Attempt> {
        match self.put_lease(full, holder, If::Absent) {
            Ok(r) => Ok(Attempt::Took(r.e_tag().unwrap_or_default().to_string(), None)),
            Err(e) if matches!(status_of(&e), Some(412) | Some(409)) => {
                let Some((body, etag)) = self.read_lease(full, shown)? else {
                    return Ok(Attempt::Raced);
                };
                let Some(body) = body else {
                    bail!("the lock {shown} exists but is not a guard lease; refusing to run (delete it if no guard is running)");
                };
                if body.stale().is_none() {
                    return Ok(Attempt::Held(LeaseOutcome::Held {
                        holder: Some(body.holder),
                        expires: body.expires,
                    }));
                }
                match self.put_lease(full, holder, If::Is(&etag)) {
                    Ok(r) => {
                        let mut h = body.holder.clone();
                        if let (Some(why), Some(o)) = (body.stale(), h.as_object_mut()) {
                            o.insert("stale_because".into(), serde_json::Value::String(why));
                        }
                        Ok(Attempt::Took(r.e_tag().unwrap_or_default().to_string(), Some(h)))
                    }
                    Err(e) if matches!(status_of(&e), Some(412) | Some(404) | Some(409)) => Ok(Attempt::Raced),
                    Err(e) => Err(sdk_error(format!("cannot take over the stale lock {shown}"), e)),
                }
            }
            Err(e) => Err(sdk_error(format!("cannot create the lock {shown}"), e)),
        }
    }

    /// Renew the lease `full` every third of its lifetime until `stop`, following its ETag.
    fn spawn_renewer(
        &self,
        full: String,
        shown: String,
        holder: serde_json::Value,
        etag: Arc<Mutex<String>>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let me = S3Store {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            prefix: String::new(),
            sse: self.sse.clone(),
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
                match me.put_lease(&full, &holder, If::Is(&cur)) {
                    Ok(r) => *etag.lock().expect("etag") = r.e_tag().unwrap_or_default().to_string(),
                    Err(e) if status_of(&e) == Some(412) || status_of(&e) == Some(404) => {
                        crate::errln!("guard: warning: the lock {shown} was taken by someone else; another guard may now run this policy");
                        return;
                    }
                    Err(e) => crate::errln!(
                        "guard: warning: {:#}",
                        sdk_error(format!("renewing the lock {shown}"), e)
                    ),
                }
            }
        })
    }
}

impl Leaser for S3Store {
    fn lease(&self, key: &str, holder: &serde_json::Value) -> Result<LeaseOutcome> {
        let full = self.full(key)?;
        let shown = self.where_(key);
        for _ in 0..5 {
            let (etag, taken_over) = match self.attempt(&full, &shown, holder)? {
                Attempt::Took(etag, taken_over) => (etag, taken_over),
                Attempt::Held(held) => return Ok(held),
                Attempt::Raced => continue,
            };
            if etag.is_empty() {
                bail!("{shown}: the server returned no ETag for the lock; it cannot be held safely");
            }
            let etag = Arc::new(Mutex::new(etag));
            let stop = Arc::new(AtomicBool::new(false));
            let renewer = self.spawn_renewer(
                full.clone(),
                shown.clone(),
                holder.clone(),
                Arc::clone(&etag),
                Arc::clone(&stop),
            );
            let lease = Lease {
                client: self.client.clone(),
                bucket: self.bucket.clone(),
                key: full,
                etag,
                stop,
                renewer: Some(renewer),
                location: shown,
            };
            return Ok(LeaseOutcome::Acquired {
                lease: Box::new(lease),
                taken_over,
            });
        }
        bail!("the lock {shown} keeps changing hands; try again")
    }

    fn inspect_lease(&self, key: &str) -> Result<(bool, Option<serde_json::Value>)> {
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
                crate::errln!(
                    "guard: warning: {:#}",
                    sdk_error(format!("releasing the lock {}", self.location), e)
                );
            }
        }
    }
}
