//! Server-side encryption of what guard writes to S3 (issue 16, "For S3"): `sse` and
//! `kms_key_id` on an s3 target encrypt its clones (CopyObject and the multipart copy). moto
//! records the headers and reports them on HeadObject, which is what these tests read.

use super::*;

/// `(ServerSideEncryption, SSEKMSKeyId)` of every object under `prefix` in `bucket`.
fn encryption(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<(String, Option<String>, Option<String>)> {
    keys(c, bucket, prefix)
        .into_iter()
        .map(|k| {
            let h = guard::runtime::block_on(c.head_object().bucket(bucket).key(&k).send()).unwrap();
            (
                k,
                h.server_side_encryption().map(|s| s.as_str().to_string()),
                h.ssekms_key_id().map(str::to_string),
            )
        })
        .collect()
}

fn unencrypted(list: &[(String, Option<String>, Option<String>)], want: &str) -> Vec<String> {
    list.iter()
        .filter(|(_, s, _)| s.as_deref() != Some(want))
        .map(|(k, s, _)| format!("{k}: {s:?}"))
        .collect()
}

/// With `sse = "AES256"` every clone a snapshot writes is SSE-S3 encrypted — the small ones
/// (CopyObject) and the large ones (multipart UploadPartCopy) — and a guarded run whose migration
/// fails still restores the bucket exactly. Clones written before `sse` was set are not reused:
/// the first snapshot with `sse` copies every object anew. (Before: no encryption header was sent,
/// and moto reports none.)
#[test]
fn with_sse_aes256_every_clone_is_encrypted_and_the_bucket_still_comes_back() {
    let (e, c) = art_env(30, "");
    let big = Obj {
        key: "big/film.mp4".into(),
        body: (0..7 * 1024 * 1024 + 333)
            .map(|i| (i as u8).wrapping_mul(13) ^ (i >> 11) as u8)
            .collect(),
        content_type: Some("video/mp4".into()),
        metadata: Default::default(),
        tags: [("size".to_string(), "large".to_string())].into_iter().collect(),
        sha256: false,
    };
    put_all(&c, SRC, vec![big]);
    let multipart = |cmd: &mut std::process::Command| {
        cmd.env("GUARD_S3_MULTIPART_THRESHOLD", "6291456")
            .env("GUARD_S3_PART_SIZE", "5242880");
    };
    // A snapshot without encryption first: its clones are plain.
    let mut cmd = e.cmd(&["snapshot"]);
    multipart(&mut cmd);
    let r: Run = cmd.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let plain = encryption(&c, CLONES, "guard/");
    assert_eq!(plain.len(), 31);
    assert_eq!(
        unencrypted(&plain, "AES256").len(),
        31,
        "moto reports no encryption without the header"
    );

    e.env.write("guard.toml", &art_policy("backups", "sse = \"AES256\"\n"));
    let before = bucket_state(&c, SRC);
    let mut cmd = e.cmd(&["--json", "--"]);
    cmd.args(e.migrate("break"));
    multipart(&mut cmd);
    let r: Run = cmd.output().unwrap().into();
    assert_eq!(r.code, 1, "the migration's own exit code: {r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "restored", "{v}");
    assert!(
        diff_states(&before, &bucket_state(&c, SRC)).is_empty(),
        "the bucket came back exactly"
    );
    let pre = e.show(v["snapshot_id"].as_str().unwrap());
    assert_eq!(pre["targets"][0]["meta"]["sse"], "AES256", "{pre}");
    assert_eq!(
        (meta(&pre, "copied"), meta(&pre, "reused")),
        (31, 0),
        "unencrypted clones are not reused: {pre}"
    );
    // Every clone the pre-run and the rescue snapshot name is encrypted.
    for id in [v["snapshot_id"].as_str().unwrap(), v["rescue_id"].as_str().unwrap()] {
        let listed = listing(&e, id);
        let all = encryption(&c, CLONES, "guard/");
        let named: Vec<_> = all
            .iter()
            .filter(|(k, _, _)| listed.values().any(|o| o["clone_key"].as_str() == Some(k.as_str())))
            .cloned()
            .collect();
        assert_eq!(named.len(), listed.len(), "snapshot {id}: every clone is there");
        assert!(
            unencrypted(&named, "AES256").is_empty(),
            "snapshot {id}: every clone encrypted: {:?}",
            unencrypted(&named, "AES256")
        );
    }
    let r = e.guard(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// `sse = "aws:kms"` with `kms_key_id`: each clone is SSE-KMS with that key.
#[test]
fn with_sse_kms_every_clone_names_the_key() {
    let key = "arn:aws:kms:us-east-1:123456789012:key/0f1e2d3c-guard-test";
    let (e, c) = art_env(12, &format!("sse = \"aws:kms\"\nkms_key_id = \"{key}\"\n"));
    let r = e.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let all = encryption(&c, CLONES, "guard/");
    assert_eq!(all.len(), 12);
    for (k, s, id) in &all {
        assert_eq!((s.as_deref(), id.as_deref()), (Some("aws:kms"), Some(key)), "{k}");
    }
}

/// Bad `sse` keys are refused when the policy is loaded (exit 64, file:line, the fix).
#[test]
fn bad_sse_keys_are_refused_with_the_line() {
    let (e, _c) = art_env(1, "sse = \"aes\"\n");
    let r = e.guard(&["snapshot"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr.contains("guard.toml:") && r.stderr.contains("\"AES256\" or \"aws:kms\""),
        "{r:?}"
    );
    e.env
        .write("guard.toml", &art_policy("backups", "kms_key_id = \"k\"\n"));
    let r = e.guard(&["snapshot"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("kms_key_id needs sse = \"aws:kms\""), "{r:?}");
    e.env.write(
        "guard.toml",
        &art_policy("backups", "sse = \"AES256\"\nkms_key_id = \"k\"\n"),
    );
    let r = e.guard(&["snapshot"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("kms_key_id goes with sse = \"aws:kms\""), "{r:?}");
}

/// Every file and directory under `root` with a mode other than 0600 / 0700.
fn not_private(root: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut bad = Vec::new();
    for e in walkdir::WalkDir::new(root).into_iter().flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue; // scratch may vanish while it is walked
        };
        let mode = m.permissions().mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            bad.push(format!("{mode:o} {}", e.path().display()));
        }
    }
    bad
}

/// R15 for an `s3://` store: under `umask 000`, the scratch directory where a snapshot stages the
/// uncompressed SQLite copy on this machine is in the store's private state directory (`$XDG_CACHE_HOME/guard/<hash>/tmp/`,
/// it was the world-readable system temp directory), and every file and directory there is
/// 0600 / 0700 — scratch, catalog, lock — during the snapshot and after a guarded run.
#[test]
fn an_s3_stores_local_staging_is_private_whatever_the_umask() {
    let e = S3Env::new(Moto::start());
    lending_db(&e.env.path("app.db"), 200);
    e.env.write("files/a.txt", "a\n");
    e.moto.create_bucket("guard-store");
    e.env.write(
        "guard.toml",
        "name = \"lending\"\nstore = \"s3://guard-store/prod\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n\n[[target]]\nname = \"files\"\nkind = \"dir\"\npath = \"files\"\n",
    );
    let sh = |args: &str| {
        let mut c = std::process::Command::new("sh");
        c.current_dir(e.env.path(""))
            .arg("-c")
            .arg(format!("umask 000; exec {} {args}", guard_bin()))
            .env_remove("GUARD_POLICY")
            .stdin(std::process::Stdio::null());
        e.moto.env(&mut c, &e.env.path("cache"));
        c
    };
    let pause = e.env.path("paused.pid");
    let release = e.env.path("release");
    let mut child = sh("snapshot")
        .env("GUARD_TEST_PAUSE", "snapshot-between-targets")
        .env("GUARD_TEST_PAUSE_FILE", &pause)
        .env("GUARD_TEST_PAUSE_RELEASE", &release)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !pause.exists() {
        assert!(child.try_wait().unwrap().is_none(), "guard finished before the pause");
        assert!(t.elapsed() < Duration::from_secs(120), "guard never paused");
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = e.env.path("cache/guard");
    // The snapshot's scratch directory (where the SQLite copy was staged) is in the state
    // directory's tmp/, not in the system temp directory.
    let staged: Vec<_> = walkdir::WalkDir::new(&state)
        .into_iter()
        .flatten()
        .filter(|x| {
            x.file_type().is_dir()
                && x.file_name().to_string_lossy().starts_with("guard-")
                && x.path()
                    .parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| n == "tmp")
        })
        .map(|x| x.path().to_path_buf())
        .collect();
    assert_eq!(
        staged.len(),
        1,
        "the snapshot's scratch directory is in the state directory's tmp/"
    );
    let bad = not_private(&state);
    std::fs::write(&release, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(bad.is_empty(), "not private during the snapshot: {bad:#?}");

    // A guarded run that fails and restores, under umask 000 too.
    let out = sh("--yes -- sh -c 'exit 3'").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = not_private(&state);
    assert!(bad.is_empty(), "not private after a run: {bad:#?}");
}

/// `[store] sse` for an `s3://` store (issue 16, "For S3: … for the s3:// store"): every object
/// guard writes to the store — manifests, journals, run logs, artifacts small (PutObject) and
/// large (multipart) — is SSE-KMS with the key, and a guarded run that fails still restores from
/// it exactly. (Before: `[store]` had no `sse`, the policy was refused; nothing was encrypted.)
#[test]
fn an_s3_store_with_sse_encrypts_every_object_it_writes() {
    let key = "arn:aws:kms:us-east-1:123456789012:key/5a6b-guard-store";
    let e = S3Env::new(Moto::start());
    let c = e.moto.client().clone();
    lending_db(&e.env.path("app.db"), 300);
    // Incompressible, larger than one 8 MiB part: its tar.gz goes up as a multipart upload.
    let noise: Vec<u8> = (0..9u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::create_dir_all(e.env.path("files")).unwrap();
    std::fs::write(e.env.path("files/noise.bin"), &noise).unwrap();
    e.moto.create_bucket("guard-store");
    e.env.write(
        "guard.toml",
        &format!(
            "name = \"lending\"\n\n[store]\npath = \"s3://guard-store/prod\"\nsse = \"aws:kms\"\nkms_key_id = \"{key}\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n\n[[target]]\nname = \"files\"\nkind = \"dir\"\npath = \"files\"\n"
        ),
    );
    let before = dump(&e.env.path("app.db"));
    let r = e.guard(&[
        "--yes",
        "--",
        "sh",
        "-c",
        "sqlite3 app.db 'DELETE FROM loan' && rm files/noise.bin && exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(dump(&e.env.path("app.db")), before, "the database came back");
    assert!(
        std::fs::read(e.env.path("files/noise.bin")).unwrap() == noise,
        "the file came back"
    );
    let all = encryption(&c, "guard-store", "prod/");
    assert!(
        all.iter().any(|(k, _, _)| k.ends_with("manifest.json")) && all.iter().any(|(k, _, _)| k.ends_with(".tar.gz")),
        "{all:?}"
    );
    for (k, s, id) in &all {
        assert_eq!((s.as_deref(), id.as_deref()), (Some("aws:kms"), Some(key)), "{k}");
    }
    let r = e.guard(&["verify"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// A restore writes objects back into the live bucket: with `sse` set they are written encrypted
/// as asked, like the clones (before: the restore sent no header and moto reports the restored
/// objects unencrypted). The bucket still comes back exactly.
#[test]
fn with_sse_the_objects_a_restore_writes_back_are_encrypted() {
    let (e, c) = art_env(40, "sse = \"AES256\"\n");
    let before = bucket_state(&c, SRC);
    let mut cmd = e.migrate("wipe");
    cmd.push(e.env.path("state.json").display().to_string());
    let r = e.guarded(&["--yes"], &cmd);
    assert_eq!(r.code, 4, "the migration's own exit code: {r:?}");
    assert!(
        diff_states(&before, &bucket_state(&c, SRC)).is_empty(),
        "the bucket came back exactly"
    );
    let restored = encryption(&c, SRC, "");
    assert_eq!(restored.len(), 40);
    assert!(
        unencrypted(&restored, "AES256").is_empty(),
        "every object the restore wrote is encrypted: {:?}",
        unencrypted(&restored, "AES256")
    );
}

/// `[store] sse` is refused for a local store and with bad words (exit 64, the line, the fix).
#[test]
fn a_store_sse_that_cannot_apply_is_refused_with_the_line() {
    let e = lending_env("");
    let policy = std::fs::read_to_string(e.path("guard.toml")).unwrap();
    let with_store = |store: &str| {
        let rest: String = policy
            .lines()
            .filter(|l| !l.starts_with("store"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (name, rest) = rest.split_once('\n').unwrap();
        format!("{name}\n[store]\n{store}\n\n{rest}")
    };
    for (store, says) in [
        ("path = \"backups\"\nsse = \"AES256\"", "sse is for an s3:// store"),
        (
            "path = \"s3://b/p\"\nsse = \"kms\"",
            "must be \"AES256\" or \"aws:kms\"",
        ),
    ] {
        e.write("guard.toml", &with_store(store));
        let r = e.guard(&["snapshot"]);
        assert_eq!(r.code, 64, "{store}: {r:?}");
        assert!(
            r.stderr.contains("guard.toml:2: [store]") && r.stderr.contains(says),
            "{store}: {r:?}"
        );
    }
}
