//! S3 bucket clones (`kind = "s3"`) and S3 as the snapshot store, with the real binary against
//! a real S3-protocol server (moto) on 127.0.0.1.

use crate::common::s3::*;
use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

mod races;
mod sse;
mod stalls;

const SRC: &str = "the-art-exchange";
const CLONES: &str = "the-art-exchange-guard";

struct S3Env {
    env: Env,
    moto: Moto,
}

impl S3Env {
    fn new(moto: Moto) -> S3Env {
        let e = S3Env { env: Env::new(), moto };
        e.moto.create_bucket(SRC);
        e.moto.create_bucket(CLONES);
        e
    }

    fn cmd_with_cache(&self, args: &[&str], cache: &str) -> std::process::Command {
        let mut c = self.env.cmd(args);
        self.moto.env(&mut c, &self.env.path(cache));
        c
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        self.cmd_with_cache(args, "cache")
    }

    fn guard(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run guard").into()
    }

    fn migrate(&self, mode: &str) -> Vec<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/s3_migrate.py");
        vec![
            "python3".into(),
            script.display().to_string(),
            self.moto.endpoint.clone(),
            SRC.into(),
            mode.into(),
        ]
    }

    fn guarded(&self, flags: &[&str], cmd: &[String]) -> Run {
        let mut args: Vec<&str> = flags.to_vec();
        args.push("--");
        args.extend(cmd.iter().map(|s| s.as_str()));
        self.guard(&args)
    }

    fn show(&self, id: &str) -> Value {
        let r = self.guard(&["show", id, "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        serde_json::from_str(&r.stdout).unwrap()
    }
}

/// The seed-004 policy: the image bucket cloned into the guard bucket.
fn art_policy(store: &str, extra: &str) -> String {
    format!(
        r#"name = "art-exchange"
store = "{store}"

[[target]]
name = "images"
kind = "s3"
bucket = "{SRC}"
clone_bucket = "{CLONES}"
endpoint = "${{S3_ENDPOINT}}"
{extra}"#
    )
}

/// moto with `n` images in the source bucket, and the art-exchange policy (local store) with
/// `extra` appended to its target.
fn art_env(n: usize, extra: &str) -> (S3Env, aws_sdk_s3::Client) {
    let e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    put_all(&c, SRC, images(n));
    e.env.write("guard.toml", &art_policy("backups", extra));
    (e, c)
}

fn meta(m: &Value, key: &str) -> u64 {
    m["targets"][0]["meta"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no meta {key} in {m}"))
        .parse()
        .unwrap()
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

#[test]
fn seed_004_failed_migration_puts_the_bucket_back_exactly() {
    let (e, c) = art_env(
        2000,
        r#"
[[check]]
name = "every image is still there"
target = "images"
objects = "images/"
expect = ">= 2000"

[[check]]
name = "originals untouched"
target = "images"
untouched = ["images/"]
"#,
    );
    let before = bucket_state(&c, SRC);
    assert_eq!(before.len(), 2000);

    // A first snapshot copies everything; the pre-run snapshot right after copies nothing.
    let t = Instant::now();
    let r = e.guard(&["snapshot", "--json"]);
    let first_secs = t.elapsed().as_secs_f64();
    assert_eq!(r.code, 0, "{r:?}");
    let first = json(&r);
    assert_eq!(
        (meta(&first, "objects"), meta(&first, "copied"), meta(&first, "reused")),
        (2000, 2000, 0),
        "{first}"
    );
    assert_eq!(
        meta(&first, "hashed") + meta(&first, "server_checksums"),
        2000,
        "every object got a SHA-256: {first}"
    );
    assert_eq!(
        meta(&first, "server_checksums"),
        2000,
        "each copy's SHA-256 comes back from the server with the copy: {first}"
    );

    let t = Instant::now();
    let r = e.guarded(&["--json"], &e.migrate("break"));
    let run_secs = t.elapsed().as_secs_f64();
    assert_eq!(r.code, 1, "the migration's own exit code: {r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    let failed: Vec<&Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["name"], "originals untouched");

    let after = bucket_state(&c, SRC);
    let d = diff_states(&before, &after);
    assert!(d.is_empty(), "the bucket came back exactly; differences: {d:?}");

    let pre = e.show(v["snapshot_id"].as_str().unwrap());
    assert_eq!(
        (meta(&pre, "objects"), meta(&pre, "copied"), meta(&pre, "reused")),
        (2000, 0, 2000),
        "{pre}"
    );
    assert_eq!(
        meta(&pre, "hashed"),
        0,
        "unchanged objects reuse the recorded SHA-256: {pre}"
    );
    // The rescue snapshot kept the failed state: 20 deleted, 30 added; 20 rewritten + 5
    // relabelled + 30 new objects were copied, nothing else (the 5 retagged ones keep their
    // clones; their new tag sets are in the rescue listing).
    let rescue = e.show(v["rescue_id"].as_str().unwrap());
    assert_eq!(rescue["kind"], "rescue");
    assert_eq!(
        (
            meta(&rescue, "objects"),
            meta(&rescue, "copied"),
            meta(&rescue, "reused")
        ),
        (2010, 55, 1955),
        "{rescue}"
    );
    assert_eq!(keys(&c, CLONES, "guard/art-exchange/images/objects/").len(), 2055);

    let r = e.guard(&["verify"]);
    assert_eq!(r.code, 0, "every snapshot verifies, clones included: {r:?}");
    eprintln!("2,000 objects: first snapshot {first_secs:.1}s; guarded run (repeat snapshot, migration, rescue, restore, verify) {run_secs:.1}s");
}

#[test]
fn first_guarded_run_restores_tag_sets_from_the_clones_it_just_made() {
    // No earlier snapshot: the pre-run snapshot copies every object and reads no tag set (the
    // copies carry them); a failed migration that retags, relabels, rewrites and deletes must
    // still come back exactly, tag sets included.
    let (e, c) = art_env(300, "");
    let before = bucket_state(&c, SRC);
    let r = e.guarded(&["--json"], &e.migrate("break"));
    assert_eq!(r.code, 1, "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    let pre = e.show(v["snapshot_id"].as_str().unwrap());
    assert_eq!((meta(&pre, "copied"), meta(&pre, "reused")), (300, 0), "{pre}");
    let d = diff_states(&before, &bucket_state(&c, SRC));
    assert!(d.is_empty(), "the bucket came back exactly; differences: {d:?}");
}

/// The listing artifact of `id`'s `images` target, by key.
fn listing(e: &S3Env, id: &str) -> std::collections::HashMap<String, Value> {
    use std::io::Read as _;
    let gz = std::fs::read(e.env.path(&format!("backups/snapshots/{id}/images.objects.jsonl.gz"))).unwrap();
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn an_object_cloned_in_the_second_it_changed_is_copied_again_under_a_new_key() {
    // Last-Modified has one-second resolution, so a clone made in the same second as the
    // object's last change cannot prove that nothing changed after it: the next snapshot copies
    // the object again, never over the earlier clone. Which case happens depends on the clock;
    // both are checked against the times the listing recorded from the server.
    let (e, c) = art_env(5, "");
    let first = json(&e.guard(&["snapshot", "--json"]));
    assert_eq!(meta(&first, "copied"), 5, "{first}");
    let key = keys(&c, SRC, "images/")[2].clone();
    // Relabel it (metadata rewrite: new Last-Modified, same bytes) and snapshot at once.
    guard::runtime::block_on(
        c.copy_object()
            .bucket(SRC)
            .key(&key)
            .copy_source(format!("{SRC}/{key}"))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .metadata("label", "new")
            .send(),
    )
    .unwrap();
    let second = json(&e.guard(&["snapshot", "--json"]));
    assert_eq!((meta(&second, "copied"), meta(&second, "reused")), (1, 4), "{second}");
    let entry = listing(&e, second["id"].as_str().unwrap())[&key].clone();
    let (modified, cloned) = (entry["modified"].as_i64().unwrap(), entry["cloned"].as_i64().unwrap());
    assert!(
        modified > 1_700_000_000 && cloned >= modified,
        "server times recorded: {entry}"
    );
    let third = json(&e.guard(&["snapshot", "--json"]));
    let third_id = third["id"].as_str().unwrap();
    let again = &listing(&e, third_id)[&key];
    let clone_keys = keys(&c, CLONES, "guard/");
    eprintln!("clone made {} second(s) after the change", cloned - modified);
    if cloned == modified {
        assert_eq!(meta(&third, "copied"), 1, "same-second clone copied again: {third}");
        let k = again["clone_key"].as_str().unwrap();
        assert!(k.ends_with(&format!("-{third_id}")), "{k}");
        assert!(clone_keys.contains(&entry["clone_key"].as_str().unwrap().to_string()));
    } else {
        assert_eq!(meta(&third, "copied"), 0, "a later-second clone is reused: {third}");
        assert_eq!(again["clone_key"], entry["clone_key"]);
    }
    assert_eq!(clone_keys.len(), 6 + meta(&third, "copied") as usize, "{clone_keys:?}");
}

#[test]
fn tags_with_content_restores_bytes_and_metadata_but_not_tag_only_changes() {
    // `tags = "with-content"`: no per-object request for unchanged objects, and the documented
    // price: a tag-only change (PutObjectTagging) is neither seen nor undone.
    let (e, c) = art_env(
        300,
        r#"tags = "with-content"

[[check]]
name = "originals untouched"
target = "images"
untouched = ["images/"]
"#,
    );
    let before = bucket_state(&c, SRC);
    let first = json(&e.guard(&["snapshot", "--json"]));
    assert_eq!(
        (meta(&first, "copied"), meta(&first, "server_checksums")),
        (300, 300),
        "{first}"
    );
    assert_eq!(first["targets"][0]["meta"]["tags"], "with-content", "{first}");
    let r = e.guarded(&["--json"], &e.migrate("break"));
    assert_eq!(r.code, 1, "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    let pre = e.show(v["snapshot_id"].as_str().unwrap());
    assert_eq!((meta(&pre, "copied"), meta(&pre, "reused")), (0, 300), "{pre}");

    let after = bucket_state(&c, SRC);
    let d = diff_states(&before, &after);
    // Deleted, rewritten and relabelled objects are back and the new ones are gone; only the
    // five retagged objects (bytes and metadata untouched) keep the migration's tags.
    assert_eq!(d.len(), 5, "{d:?}");
    for k in &d {
        let key = k.split(':').next().unwrap();
        assert_eq!(before[key].sha256, after[key].sha256, "{k}");
        assert_eq!(before[key].content_type, after[key].content_type, "{k}");
        assert_eq!(before[key].metadata, after[key].metadata, "{k}");
        assert_eq!(after[key].tags.get("public").map(String::as_str), Some("no"), "{k}");
    }
}

#[test]
fn kept_migration_and_a_repeat_snapshot_copies_nothing() {
    let (e, c) = art_env(
        300,
        r#"
[[check]]
name = "originals untouched"
target = "images"
untouched = ["images/"]

[[check]]
name = "thumbnails made"
target = "images"
objects = "thumbs/"
expect = "== 10"

[[check]]
name = "bucket grew"
target = "images"
bytes = ""
expect = "changed"

[[check]]
name = "image count"
target = "images"
objects = "images/"
expect = "unchanged"
"#,
    );
    let t = Instant::now();
    let first = json(&e.guard(&["snapshot", "--json"]));
    let t1 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let second = json(&e.guard(&["snapshot", "--json"]));
    let t2 = t.elapsed().as_secs_f64();
    assert_eq!(
        (meta(&first, "copied"), meta(&first, "copied_bytes") > 0),
        (300, true),
        "{first}"
    );
    assert_eq!(
        (
            meta(&second, "copied"),
            meta(&second, "copied_bytes"),
            meta(&second, "reused"),
            meta(&second, "hashed")
        ),
        (0, 0, 300, 0),
        "{second}"
    );
    eprintln!("300 objects: first snapshot {t1:.2}s, repeat {t2:.2}s");

    let before = bucket_state(&c, SRC);
    let r = e.guarded(&["--json"], &e.migrate("add"));
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "kept");
    assert!(
        v["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true),
        "{v}"
    );
    let count = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "image count")
        .unwrap()
        .clone();
    assert_eq!(
        (count["before"].as_str(), count["after"].as_str()),
        (Some("300"), Some("300")),
        "{count}"
    );
    // Issue 15 F5: a check on what the command creates is read after it only (before: none).
    let thumbs = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "thumbnails made")
        .unwrap()
        .clone();
    assert_eq!(
        (&thumbs["before"], thumbs["after"].as_str()),
        (&serde_json::Value::Null, Some("10")),
        "{thumbs}"
    );
    let after = bucket_state(&c, SRC);
    assert_eq!(after.len(), 310);
    assert!(diff_states(&before, &after)
        .iter()
        .all(|d| d.starts_with("thumbs/") && d.ends_with("extra")));
    let pre = e.show(v["snapshot_id"].as_str().unwrap());
    assert_eq!(
        meta(&pre, "copied"),
        0,
        "nothing changed since the last snapshot: {pre}"
    );

    // A clone deleted behind guard's back: verify names it.
    let r = e.guard(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    let victim = keys(&c, CLONES, "guard/")[17].clone();
    guard::runtime::block_on(c.delete_object().bucket(CLONES).key(&victim).send()).unwrap();
    let r = e.guard(&["verify"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.all().contains(&victim) && r.all().contains("is missing"), "{r:?}");
}

#[test]
fn pagination_past_a_page_of_keys() {
    // Pages of 7 keys: every listing (source, clones, live bucket, store) must follow them.
    let e = S3Env::new(Moto::start_with(&[("MOTO_S3_DEFAULT_MAX_KEYS", "7")]));
    let c = e.moto.client().clone();
    e.moto.create_bucket("guard-store");
    put_all(&c, SRC, images(120));
    assert_eq!(keys(&c, SRC, "").len(), 120);
    e.env.write("guard.toml", &art_policy("s3://guard-store/art", ""));
    let before = bucket_state(&c, SRC);
    let r = e.guarded(&["--json"], &e.migrate("break"));
    assert_eq!(r.code, 1, "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    let d = diff_states(&before, &bucket_state(&c, SRC));
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(meta(&e.show(v["snapshot_id"].as_str().unwrap()), "objects"), 120);
    assert_eq!(meta(&e.show(v["rescue_id"].as_str().unwrap()), "objects"), 148);
    let listed = e.guard(&["list", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&listed.stdout).unwrap()["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{listed:?}"
    );
}

#[test]
fn objects_above_the_multipart_threshold() {
    let e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    let big = |key: &str, mib: usize, seed: u8| Obj {
        key: key.into(),
        body: (0..mib * 1024 * 1024 + 777)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
            .collect(),
        content_type: Some("video/mp4".into()),
        metadata: [("camera".to_string(), format!("cam-{seed}"))].into_iter().collect(),
        tags: [("size".to_string(), "large".to_string())].into_iter().collect(),
        sha256: false,
    };
    let mut objs = vec![big("big/a.mp4", 12, 1), big("big/b.mp4", 7, 2)];
    objs.extend(images(20));
    put_all(&c, SRC, objs);
    e.env.write("guard.toml", &art_policy("backups", ""));
    let before = bucket_state(&c, SRC);
    let mut cmd = e.cmd(&["--json", "--"]);
    cmd.args(e.migrate("big"))
        .env("GUARD_S3_MULTIPART_THRESHOLD", "6291456")
        .env("GUARD_S3_PART_SIZE", "5242880");
    let r: Run = cmd.output().unwrap().into();
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(json(&r)["outcome"], "restored");
    let d = diff_states(&before, &bucket_state(&c, SRC));
    assert!(
        d.is_empty(),
        "large objects came back with their bytes, content-type, metadata and tags: {d:?}"
    );
    // The clones of the large objects were made part by part (a multipart ETag: `-N`).
    let clones = keys(&c, CLONES, "guard/");
    let multipart = clones
        .iter()
        .filter(|k| {
            let h = guard::runtime::block_on(c.head_object().bucket(CLONES).key(*k).send()).unwrap();
            h.e_tag().unwrap_or_default().trim_matches('"').contains('-')
        })
        .count();
    assert_eq!(multipart, 2, "{clones:?}");
}

#[test]
fn server_dying_mid_clone_runs_nothing() {
    let mut e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    put_all(&c, SRC, images(600));
    e.env.write("guard.toml", &art_policy("backups", ""));
    let marker = e.env.path("command-ran");
    let mut cmd = e.cmd(&["--", "sh", "-c", &format!("touch {}", marker.display())]);
    cmd.env("GUARD_S3_CONCURRENCY", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    while keys(&c, CLONES, "guard/").len() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "guard never started cloning"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    e.moto.kill();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 69, "snapshot failed, command not run: {r:?}");
    assert!(r.stderr.contains("snapshot of target images failed"), "{r:?}");
    assert!(!marker.exists(), "the command must not run without a complete snapshot");
    let l = e.guard(&["list", "--json"]);
    assert_eq!(l.code, 0, "{l:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&l.stdout).unwrap()["snapshots"],
        serde_json::json!([]),
        "no complete snapshot: {l:?}"
    );
    let snaps = e.env.path("backups/snapshots");
    let left: Vec<_> = std::fs::read_dir(&snaps).map(|d| d.collect()).unwrap_or_default();
    assert!(left.is_empty(), "the partial snapshot was discarded: {left:?}");
}

/// A SQLite database with a 12 MiB incompressible table, so its artifact spans several parts.
fn sqlite_env(e: &S3Env) {
    lending_db(&e.env.path("app.db"), 40);
    let conn = rusqlite::Connection::open(e.env.path("app.db")).unwrap();
    conn.execute_batch("CREATE TABLE photo (id INTEGER PRIMARY KEY, data BLOB)")
        .unwrap();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for i in 0..12 {
        let blob: Vec<u8> = (0..1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        conn.execute("INSERT INTO photo (id, data) VALUES (?1, ?2)", (i, blob))
            .unwrap();
    }
    e.moto.create_bucket("guard-store");
    e.env.write(
        "guard.toml",
        "name = \"lending\"\nstore = \"s3://guard-store/prod\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n",
    );
}

#[test]
fn s3_store_snapshot_verify_restore_of_sqlite() {
    let e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    sqlite_env(&e);
    let db = e.env.path("app.db");
    let before = dump(&db);

    let r = e.guard(&["snapshot", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let m = json(&r);
    let id = m["id"].as_str().unwrap().to_string();
    let art = &m["targets"][0]["artifacts"][0];
    assert!(
        art["bytes"].as_u64().unwrap() > 8 << 20,
        "the artifact spans several upload parts: {art}"
    );
    let stored = keys(&c, "guard-store", "prod/");
    assert!(
        stored.contains(&format!("prod/snapshots/{id}/manifest.json")),
        "{stored:?}"
    );
    assert!(
        stored.contains(&format!("prod/{}", art["key"].as_str().unwrap())),
        "{stored:?}"
    );
    assert!(!e.env.path("backups").exists(), "nothing stored locally");

    let r = e.guard(&["verify", &id]);
    assert_eq!(r.code, 0, "{r:?}");

    // Damage, then restore from the S3 store.
    sql(&db, "DELETE FROM payment; DROP TABLE photo;");
    let r = e.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dump(&db), before, "the database came back exactly from the S3 store");

    // A flipped byte in a stored artifact is found and named.
    let id2 = json(&e.guard(&["snapshot", "--json"]))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("prod/snapshots/{id2}/app.sqlite.gz");
    let mut bytes = guard::runtime::block_on(async {
        c.get_object()
            .bucket("guard-store")
            .key(&key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
    })
    .into_bytes()
    .to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    guard::runtime::block_on(c.put_object().bucket("guard-store").key(&key).body(bytes.into()).send()).unwrap();
    let r = e.guard(&["verify", &id2]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(
        r.stderr.contains(&format!("s3://guard-store/{key}")),
        "names the artifact: {r:?}"
    );

    // A guarded run on an S3 store: the run log lands in the store; the lock is released.
    let r = e.guarded(
        &["--json"],
        &["sh".into(), "-c".into(), "echo hello-from-the-command; exit 3".into()],
    );
    assert_eq!(r.code, 3, "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    let log_key = format!("prod/runs/{}/run.log", v["run_id"].as_str().unwrap());
    let log = guard::runtime::block_on(async {
        c.get_object()
            .bucket("guard-store")
            .key(&log_key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
    })
    .into_bytes();
    assert!(
        String::from_utf8_lossy(&log).contains("hello-from-the-command"),
        "run log uploaded"
    );
    assert!(keys(&c, "guard-store", "prod/locks/").is_empty(), "lock released");
    assert_eq!(dump(&db), before);
}

fn lease(host: &str, pid: u32, expires_in: i64) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    serde_json::to_vec(&serde_json::json!({
        "holder": {"host": host, "pid": pid, "since": "2026-01-01T00:00:00Z", "command": "python3 migrate.py", "run_id": null},
        "host": host,
        "pid": pid,
        "expires": now + expires_in,
    }))
    .unwrap()
}

#[test]
fn s3_store_lock_keeps_a_second_guard_out() {
    let e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    sqlite_env(&e);
    let lock_key = "prod/locks/lending.lock";
    let started = e.env.path("started");
    let release = e.env.path("release");

    // Guard A holds the lock while its command runs, until the test releases it (no sleep whose
    // length a loaded machine could outlast).
    let mut a = e.cmd(&[
        "--",
        "sh",
        "-c",
        &format!(
            "touch {}; i=0; while [ ! -e {} ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done",
            started.display(),
            release.display()
        ),
    ]);
    a.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut a = a.spawn().unwrap();
    let t = Instant::now();
    while !started.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "guard A never ran its command");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        keys(&c, "guard-store", lock_key).len(),
        1,
        "the lease object exists while A runs"
    );
    // Another machine (its own local state, so no shared flock) is refused by the store lock.
    let r: Run = e
        .cmd_with_cache(&["snapshot"], "other-machine-cache")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 75, "{r:?}");
    assert!(r.stderr.contains(&format!("pid {}", a.id())), "names the holder: {r:?}");
    assert!(r.stderr.contains("s3://guard-store/prod/locks/lending.lock"), "{r:?}");
    // And so is a second guard on this machine.
    let r = e.guard(&["snapshot"]);
    assert_eq!(r.code, 75, "{r:?}");
    std::fs::write(&release, "").unwrap();
    assert!(a.wait().unwrap().success());
    assert!(keys(&c, "guard-store", lock_key).is_empty(), "released at the end");

    // A live lease of another machine refuses us, naming it.
    let put = |body: Vec<u8>| {
        guard::runtime::block_on(
            c.put_object()
                .bucket("guard-store")
                .key(lock_key)
                .body(body.into())
                .send(),
        )
        .unwrap()
    };
    put(lease("other-machine", 4242, 3600));
    let r = e.guard(&["snapshot"]);
    assert_eq!(r.code, 75, "{r:?}");
    assert!(r.stderr.contains("pid 4242 on other-machine"), "{r:?}");

    // An expired lease (its machine died) is taken over, loudly.
    put(lease("other-machine", 4242, -60));
    let r = e.guarded(&[], &["true".into()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("took over the lock") && r.stderr.contains("other-machine"),
        "{r:?}"
    );

    // A lease whose holder on this host is gone is taken over too.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    put(lease(&guard::clock::hostname(), dead_pid, 3600));
    let r = e.guarded(&[], &["true".into()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("took over the lock") && r.stderr.contains(&format!("pid {dead_pid}")),
        "{r:?}"
    );
    assert!(keys(&c, "guard-store", lock_key).is_empty());
}

/// Retention on a bucket-clone target: pruning deletes exactly the clone objects that no kept
/// snapshot references, and the kept snapshots still verify and restore.
#[test]
fn prune_deletes_only_the_clone_objects_no_kept_snapshot_needs() {
    let e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    let mut objs = images(50);
    put_all(&c, SRC, objs.clone());
    e.env.write(
        "guard.toml",
        &art_policy("backups", "[retention]\nkeep_within = \"30d\"\nkeep_last = 2\n"),
    );
    let now = time::OffsetDateTime::now_utc();
    let at = |days: i64| guard::clock::rfc3339(now - time::Duration::days(days));
    let snap = |when: &str| {
        let r: Run = e
            .cmd(&["snapshot"])
            .env("GUARD_TEST_NOW", when)
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 0, "{r:?}");
        r.stdout.trim().to_string()
    };
    let a = snap(&at(100));
    for o in objs.iter_mut().take(10) {
        o.body.extend_from_slice(b" v2");
    }
    put_all(&c, SRC, objs[..10].to_vec());
    let b = snap(&at(90));
    for o in objs.iter_mut().skip(10).take(10) {
        o.body.extend_from_slice(b" v3");
    }
    put_all(&c, SRC, objs[10..20].to_vec());
    let c3 = snap(&at(80));
    let d = snap(&at(0));
    assert_eq!(keys(&c, CLONES, "guard/").len(), 70, "50 originals + 10 + 10 rewritten");

    let r = e.guard(&["prune", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    let deleted: Vec<&str> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(deleted.len(), 2, "{v}");
    assert!(deleted.contains(&a.as_str()) && deleted.contains(&b.as_str()), "{v}");
    // The originals of the 20 rewritten objects were referenced only by the pruned snapshots.
    assert_eq!(keys(&c, CLONES, "guard/").len(), 50, "{v}");
    for id in [&c3, &d] {
        let r = e.guard(&["verify", id]);
        assert_eq!(r.code, 0, "kept snapshot {id} still verifies: {r:?}");
    }
    // And the oldest kept one still restores the bucket exactly.
    let want = bucket_state(&c, SRC);
    put_all(
        &c,
        SRC,
        images(5)
            .into_iter()
            .map(|mut o| {
                o.key = format!("junk/{}", o.key);
                o
            })
            .collect(),
    );
    let r = e.guard(&["restore", &c3, "--yes", "--no-rescue"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(diff_states(&want, &bucket_state(&c, SRC)).is_empty());
}

/// Fail closed: when a kept snapshot's manifest cannot be read, prune deletes no clone object
/// (that snapshot might reference any of them) and says which snapshot is unreadable.
#[test]
fn prune_deletes_no_clone_when_a_kept_manifest_is_unreadable() {
    let e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    let mut objs = images(20);
    put_all(&c, SRC, objs.clone());
    e.env.write(
        "guard.toml",
        &art_policy("backups", "[retention]\nkeep_within = \"30d\"\nkeep_last = 1\n"),
    );
    let now = time::OffsetDateTime::now_utc();
    let snap = |days: i64| {
        let when = guard::clock::rfc3339(now - time::Duration::days(days));
        let r: Run = e
            .cmd(&["snapshot"])
            .env("GUARD_TEST_NOW", when)
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 0, "{r:?}");
        r.stdout.trim().to_string()
    };
    snap(100);
    for o in objs.iter_mut().take(5) {
        o.body.extend_from_slice(b" v2");
    }
    put_all(&c, SRC, objs[..5].to_vec());
    let newest = snap(0);
    let before = keys(&c, CLONES, "guard/").len();
    assert_eq!(before, 25);
    std::fs::write(
        e.env.path(&format!("backups/snapshots/{newest}/manifest.json")),
        b"{ damaged",
    )
    .unwrap();
    let r = e.guard(&["prune"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(&newest) && r.stderr.contains("unreadable"), "{r:?}");
    assert_eq!(keys(&c, CLONES, "guard/").len(), before, "no clone deleted");
}
