//! A real S3-protocol server for tests: moto (`moto_server -H 127.0.0.1 -p PORT`) started per
//! test on a free port and killed on drop, plus helpers to fill buckets and read them back.
//!
//! The server is `$GUARD_TEST_MOTO` when set (scripts/test.sh installs moto[server] from PyPI
//! and sets it), else `moto_server` on PATH, else `python3 -m moto.server`.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};

pub struct Moto {
    child: Option<Child>,
    pub endpoint: String,
    client: Client,
}

fn moto_command(port: u16) -> Command {
    let explicit = std::env::var("GUARD_TEST_MOTO").ok().filter(|s| !s.trim().is_empty());
    let on_path = || {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("moto_server"))
                    .find(|p| p.is_file())
            })
            .map(|p| p.display().to_string())
    };
    let mut c = match explicit.or_else(on_path) {
        Some(bin) => Command::new(bin),
        None => {
            let mut c = Command::new("python3");
            c.args(["-m", "moto.server"]);
            c
        }
    };
    c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A client with the test credentials for `endpoint`.
pub fn client_for(endpoint: &str) -> Client {
    let conf = aws_sdk_s3::config::Builder::default()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// Start a server with extra environment (e.g. `MOTO_S3_DEFAULT_MAX_KEYS`).
    pub fn start_with(env: &[(&str, &str)]) -> Moto {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = moto_command(port);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => panic!(
                    "cannot start moto ({e}); install it with `python3 -m pip install 'moto[server]>=5,<6'` or run scripts/test.sh"
                ),
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("moto exited with {status} (port {port})");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let endpoint = format!("http://127.0.0.1:{port}");
                    let client = client_for(&endpoint);
                    if guard::runtime::block_on(client.list_buckets().send()).is_ok() {
                        return Moto {
                            child: Some(child),
                            endpoint,
                            client,
                        };
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last.is_empty() {
                last = format!("moto did not answer on port {port} within 30s");
            }
        }
        panic!("{last}");
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Kill the server now (a server dying mid-operation).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the server (SIGSTOP): it keeps its port and accepts connections, but answers
    /// nothing — a server that hangs.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Let a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("moto is running").id();
        assert_eq!(
            unsafe { libc::kill(pid as libc::pid_t, sig) },
            0,
            "signal {sig} to moto"
        );
    }

    /// Environment for guard and the migration scripts: test credentials, this endpoint as
    /// the default (S3 stores), a private cache directory.
    pub fn env(&self, cmd: &mut Command, cache: &std::path::Path) {
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("XDG_CACHE_HOME", cache)
            .env("S3_ENDPOINT", &self.endpoint)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL_S3");
    }

    pub fn create_bucket(&self, b: &str) {
        guard::runtime::block_on(self.client.create_bucket().bucket(b).send())
            .unwrap_or_else(|e| panic!("create bucket {b}: {e:?}"));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test object carries besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Obj {
    pub key: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// Upload with a SHA-256 checksum (the server then reports it).
    pub sha256: bool,
}

/// The seed-004 image bucket: `n` images of a few KB, some with content-type, metadata, tags
/// and server-side SHA-256 checksums.
pub fn images(n: usize) -> Vec<Obj> {
    (0..n)
        .map(|i| {
            let mut o = Obj {
                key: format!("images/{:02}/{i:05}.jpg", i % 50),
                ..Default::default()
            };
            let len = 1500 + (i * 37) % 3000;
            o.body = format!("image {i} ")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(len)
                .collect();
            if i % 3 == 0 {
                o.content_type = Some("image/jpeg".into());
            }
            if i % 4 == 0 {
                o.metadata.insert("artist".into(), format!("artist-{}", i % 17));
            }
            if i % 5 == 0 {
                o.tags.insert("collection".into(), format!("c{}", i % 7));
                o.tags.insert("public".into(), "yes".into());
            }
            o.sha256 = i % 6 == 0;
            o
        })
        .collect()
}

/// Upload `objs` into `bucket`, 16 at a time.
/// Upload `objs` (16 at a time), then wait for the clock's second to change.
pub fn put_all(client: &Client, bucket: &str, objs: Vec<Obj>) {
    guard::runtime::block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut it = objs.into_iter();
        loop {
            while set.len() < 16 {
                let Some(o) = it.next() else { break };
                let c = client.clone();
                let bucket = bucket.to_string();
                set.spawn(async move {
                    let mut req = c
                        .put_object()
                        .bucket(&bucket)
                        .key(&o.key)
                        .body(ByteStream::from(o.body.clone()));
                    if let Some(ct) = &o.content_type {
                        req = req.content_type(ct);
                    }
                    for (k, v) in &o.metadata {
                        req = req.metadata(k, v);
                    }
                    if !o.tags.is_empty() {
                        req = req.tagging(
                            o.tags
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join("&"),
                        );
                    }
                    if o.sha256 {
                        req = req.checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256);
                    }
                    req.send().await.unwrap_or_else(|e| panic!("put {}: {e:?}", o.key));
                });
            }
            match set.join_next().await {
                None => break,
                Some(r) => r.unwrap(),
            }
        }
    });
    // S3's Last-Modified has one-second resolution and guard trusts a clone only when it was
    // copied in a later second than the object's last change: let that second pass, so the
    // counts of copied and reused objects the tests assert do not depend on the clock.
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

/// Everything observable about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub sha256: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// Keys under `prefix` of `bucket`, every page.
pub fn keys(client: &Client, bucket: &str, prefix: &str) -> Vec<String> {
    guard::runtime::block_on(async {
        let mut out = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(p) = pages.next().await {
            for o in p.unwrap().contents() {
                out.push(o.key().unwrap().to_string());
            }
        }
        out
    })
}

/// The state of every object of `bucket`: bytes (SHA-256), content-type, metadata, tags.
pub fn bucket_state(client: &Client, bucket: &str) -> BTreeMap<String, State> {
    let keys = keys(client, bucket, "");
    guard::runtime::block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut out = BTreeMap::new();
        let mut it = keys.into_iter();
        loop {
            while set.len() < 16 {
                let Some(k) = it.next() else { break };
                let c = client.clone();
                let bucket = bucket.to_string();
                set.spawn(async move {
                    let r = c.get_object().bucket(&bucket).key(&k).send().await.unwrap();
                    let content_type = r.content_type().map(str::to_string);
                    let metadata: BTreeMap<String, String> =
                        r.metadata().cloned().unwrap_or_default().into_iter().collect();
                    // S3 sends `x-amz-tagging-count` with an object that has tags and leaves it
                    // out for one without: only a tagged object needs its tag set read (a tag
                    // added or dropped by a restore changes the header, so it is still seen).
                    let tag_count = r.tag_count();
                    let body = r.body.collect().await.unwrap().into_bytes();
                    let tags = match tag_count {
                        Some(n) if n > 0 => {
                            let t = c.get_object_tagging().bucket(&bucket).key(&k).send().await.unwrap();
                            let tags: BTreeMap<String, String> = t
                                .tag_set()
                                .iter()
                                .map(|t| (t.key().to_string(), t.value().to_string()))
                                .collect();
                            assert_eq!(tags.len() as i32, n, "{k}: the tag count header and the tag set agree");
                            tags
                        }
                        _ => BTreeMap::new(),
                    };
                    (
                        k,
                        State {
                            sha256: hex::encode(Sha256::digest(&body)),
                            size: body.len() as u64,
                            content_type,
                            metadata,
                            tags,
                        },
                    )
                });
            }
            match set.join_next().await {
                None => break,
                Some(r) => {
                    let (k, s) = r.unwrap();
                    out.insert(k, s);
                }
            }
        }
        out
    })
}

/// Human-readable differences between two bucket states (empty when equal).
pub fn diff_states(a: &BTreeMap<String, State>, b: &BTreeMap<String, State>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, s) in a {
        match b.get(k) {
            None => d.push(format!("{k}: missing")),
            Some(t) if t != s => d.push(format!("{k}: {s:?} != {t:?}")),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            d.push(format!("{k}: extra"));
        }
    }
    d
}
