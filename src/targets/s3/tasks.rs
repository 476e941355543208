//! The bounded concurrency every bucket-wide S3 operation runs under, and the size limits of
//! copies (environment overrides for tests and tuning).

use std::collections::HashMap;
use std::future::Future;

use anyhow::{anyhow, Result};

/// Objects larger than this are copied with multipart UploadPartCopy (CopyObject stops at 5 GiB).
pub(super) const DEFAULT_MULTIPART_THRESHOLD: u64 = 5 << 30;

/// Part size of multipart copies.
pub(super) const DEFAULT_PART_SIZE: u64 = 512 << 20;

/// Requests in flight at once.
pub(super) const DEFAULT_CONCURRENCY: usize = 16;

pub(super) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

pub(super) fn multipart_threshold() -> u64 {
    env_u64("GUARD_S3_MULTIPART_THRESHOLD")
        .unwrap_or(DEFAULT_MULTIPART_THRESHOLD)
        .min(DEFAULT_MULTIPART_THRESHOLD)
}

pub(super) fn part_size() -> u64 {
    env_u64("GUARD_S3_PART_SIZE").unwrap_or(DEFAULT_PART_SIZE).max(5 << 20)
}

pub(super) fn concurrency() -> usize {
    env_u64("GUARD_S3_CONCURRENCY")
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_CONCURRENCY)
        .clamp(1, 256)
}

/// Run `f` over `items` with at most `limit` in flight; the first error stops the rest.
pub(super) async fn bounded<I, T, F, Fut>(items: Vec<I>, limit: usize, f: F) -> Result<Vec<T>>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(items.len());
    let mut it = items.into_iter();
    loop {
        while set.len() < limit {
            match it.next() {
                Some(i) => {
                    set.spawn(f(i));
                }
                None => break,
            }
        }
        match set.join_next().await {
            None => break,
            Some(Ok(Ok(t))) => out.push(t),
            Some(Ok(Err(e))) => {
                set.abort_all();
                return Err(e);
            }
            Some(Err(e)) => {
                set.abort_all();
                return Err(anyhow!("an S3 task failed: {e}"));
            }
        }
    }
    Ok(out)
}

/// What [`bounded_each`] did.
pub(super) struct Each<T> {
    pub(super) done: Vec<T>,
    /// Items that failed on their own, by key.
    pub(super) failed: Vec<(String, anyhow::Error)>,
    /// The server stopped answering ([`crate::aws::unavailable`]): that error, and the keys of
    /// the items not done or not confirmed (not started, or in flight when it stopped).
    pub(super) stopped: Option<(anyhow::Error, Vec<String>)>,
}

/// Run `f` over `items` with at most `limit` in flight, each on its own: an item's failure is
/// recorded under its `key` and the others go on — unless the server stopped answering, which
/// stops everything at once (asking it about each remaining item would only wait out every
/// timeout again).
pub(super) async fn bounded_each<I, T, F, Fut>(items: Vec<I>, limit: usize, key: fn(&I) -> String, f: F) -> Each<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut out = Each {
        done: Vec::new(),
        failed: Vec::new(),
        stopped: None,
    };
    let mut not_started = Vec::new();
    let mut it = items.into_iter();
    loop {
        while out.stopped.is_none() && set.len() < limit {
            let Some(i) = it.next() else { break };
            let k = key(&i);
            let h = set.spawn(f(i));
            in_flight.insert(h.id(), k);
        }
        match set.join_next_with_id().await {
            None => break,
            Some(Ok((id, Ok(t)))) => {
                in_flight.remove(&id);
                out.done.push(t);
            }
            Some(Ok((id, Err(e)))) if crate::aws::unavailable(&e) => {
                if out.stopped.is_none() {
                    set.abort_all();
                    not_started.extend(it.by_ref().map(|i| key(&i)));
                    out.stopped = Some((e, Vec::new()));
                }
                let _ = id; // stays in `in_flight`: not confirmed
            }
            Some(Ok((id, Err(e)))) => {
                if let Some(k) = in_flight.remove(&id) {
                    out.failed.push((k, e));
                }
            }
            Some(Err(e)) if e.is_cancelled() => {}
            Some(Err(e)) => {
                if let Some(k) = in_flight.remove(&e.id()) {
                    out.failed.push((k, anyhow!("an S3 task failed: {e}")));
                }
            }
        }
    }
    if let Some((_, rest)) = &mut out.stopped {
        rest.extend(in_flight.into_values());
        rest.extend(not_started);
        rest.sort();
    }
    out
}
