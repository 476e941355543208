//! Objects that change while a snapshot copies them (issue 14 item 5, red-team R5), and
//! restores that cannot put back every object.
//!
//! moto, like some other S3-compatible servers, ignores `x-amz-copy-source-if-match`: a copy
//! pinned to the listed ETag silently copies whatever the object holds by then. guard must
//! notice from the copy's own result.

use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A writer rewriting objects of the source bucket with new bytes of a new size (below the
/// 1,500 bytes every seeded image has), one after another, until `stop` is set or it sees
/// `until_clones` clone objects (checked every ten writes). `writes` counts what it wrote.
fn writer(
    c: aws_sdk_s3::Client,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    until_clones: Option<usize>,
    pause: Duration,
    writes: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        while !stop.load(Ordering::SeqCst) {
            let k = &keys[next() as usize % keys.len()];
            let len = 100 + next() as usize % 1300;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            guard::runtime::block_on(c.put_object().bucket(SRC).key(k).body(body.into()).send())
                .unwrap_or_else(|e| panic!("writer: put {k}: {e:?}"));
            let n = writes.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(limit) = until_clones {
                if n.is_multiple_of(10) && super::keys(&c, CLONES, "guard/").len() >= limit {
                    return;
                }
            }
            std::thread::sleep(pause);
        }
    })
}

/// The state file the `wipe` migration writes: key → (size, SHA-256).
fn read_state(path: &Path) -> BTreeMap<String, (u64, String)> {
    let v: BTreeMap<String, (u64, String)> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v
}

fn listing_of(state: &BTreeMap<String, State>) -> BTreeMap<String, (u64, String)> {
    state
        .iter()
        .map(|(k, s)| (k.clone(), (s.size, s.sha256.clone())))
        .collect()
}

/// R5 through the binary: a writer rewrites objects while the pre-run snapshot copies them, and
/// stops partway; the command then empties the bucket and fails. The snapshot must hold exactly
/// what the bucket held when the command started (every copy checked against its listing,
/// changed objects listed and copied again), and the restore must put that back.
#[test]
fn objects_rewritten_during_the_snapshot_are_copied_again_and_the_bucket_comes_back() {
    let (e, c) = art_env(300, "");
    let src_keys = keys(&c, SRC, "");
    let state = e.env.path("before-command.json");
    let (stop, writes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let w = writer(
        c.clone(),
        src_keys,
        Arc::clone(&stop),
        Some(100),
        Duration::from_millis(5),
        Arc::clone(&writes),
    );
    let mut cmd = e.cmd(&["--json", "--"]);
    cmd.args(e.migrate("wipe")).arg(&state).env("GUARD_S3_CONCURRENCY", "2");
    let r: Run = cmd.output().unwrap().into();
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    assert_eq!(
        r.code, 4,
        "the command's own exit code, after a verified restore: {r:?}"
    );
    let v = json(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    let before = read_state(&state);
    assert_eq!(before.len(), 300);
    let after = listing_of(&bucket_state(&c, SRC));
    let diff: Vec<_> = before
        .iter()
        .filter(|(k, s)| after.get(*k) != Some(s))
        .map(|(k, _)| k)
        .chain(after.keys().filter(|k| !before.contains_key(*k)))
        .collect();
    assert!(
        diff.is_empty(),
        "after the restore the bucket equals what the command started from; differences: {diff:?}"
    );
    let pre = e.show(v["snapshot_id"].as_str().unwrap());
    eprintln!(
        "{} writes during the snapshot; {} listings, {} copies redone, {} copy results that did not match their listing",
        writes.load(Ordering::SeqCst),
        meta(&pre, "listings"),
        meta(&pre, "recopied"),
        meta(&pre, "copy_mismatches")
    );
    assert!(meta(&pre, "recopied") > 0, "the writer raced the copies: {pre}");
    assert!(meta(&pre, "listings") >= 2, "{pre}");
}

/// Fail closed: an object rewritten between every listing and the next (a pause after each
/// listing makes sure of it) never gets a copy that matches a listing, so after a bounded
/// number of listings the snapshot fails, exit 69, and the command never runs.
#[test]
fn an_object_that_never_stops_changing_fails_the_snapshot_and_runs_nothing() {
    let (e, c) = art_env(50, "");
    let hot = keys(&c, SRC, "")[7].clone();
    let (stop, writes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let w = writer(
        c.clone(),
        vec![hot.clone()],
        Arc::clone(&stop),
        None,
        Duration::from_millis(50),
        Arc::clone(&writes),
    );
    let marker = e.env.path("command-ran");
    let mut cmd = e.cmd(&["--", "sh", "-c", &format!("touch {}", marker.display())]);
    cmd.env("GUARD_TEST_PAUSE", "s3-listed")
        .env("GUARD_TEST_PAUSE_SECS", "1")
        .env("GUARD_TEST_PAUSE_FILE", e.env.path("paused"));
    let r: Run = cmd.output().unwrap().into();
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    assert_eq!(r.code, 69, "{r:?}");
    assert!(!marker.exists(), "the command must not run without a verified snapshot");
    assert!(
        r.stderr.contains(&hot) && r.stderr.contains("kept changing"),
        "names the object: {r:?}"
    );
    let l = e.guard(&["list", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&l.stdout).unwrap()["snapshots"],
        serde_json::json!([]),
        "no complete snapshot: {l:?}"
    );
}

/// A restore that cannot put back some objects (their clones were deleted behind guard's back)
/// puts back every other one, proves those, and names exactly the ones it could not (exit 80).
#[test]
fn a_restore_missing_some_clones_puts_back_every_other_object_and_names_them() {
    let (e, c) = art_env(200, "");
    let before = bucket_state(&c, SRC);
    let all = keys(&c, SRC, "");
    let victims = [all[3].clone(), all[50].clone(), all[120].clone()];
    let state = e.env.path("before-command.json");
    let mut cmd = e.cmd(&["--json", "--"]);
    cmd.args(e.migrate("wipe"))
        .arg(&state)
        .arg(CLONES)
        .arg(victims.join(","));
    let r: Run = cmd.output().unwrap().into();
    assert_eq!(r.code, 80, "{r:?}");
    assert!(r.stdout.contains("\"restore_failed\""), "{r:?}");
    for v in &victims {
        assert!(r.stderr.contains(v.as_str()), "names {v}: {r:?}");
    }
    assert!(
        r.stderr.contains("3 object(s) could not be restored")
            && r.stderr
                .contains("every other object was put back and matches the snapshot"),
        "{r:?}"
    );
    let after = bucket_state(&c, SRC);
    let mut want = before.clone();
    for v in &victims {
        want.remove(v);
    }
    let d = diff_states(&want, &after);
    assert!(d.is_empty(), "every other object came back exactly: {d:?}");
}
