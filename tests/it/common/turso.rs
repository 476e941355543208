//! The local Turso fake (tests/fakes/turso_fake.py): started per test on a free port with its
//! data in a temporary directory, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

pub const ORG: &str = "liveone";
pub const API_TOKEN: &str = "plat-token-5b1e0c2f9a7d44e1";

pub struct TursoFake {
    child: Child,
    pub dir: tempfile::TempDir,
    pub api_url: String,
    http: reqwest::Client,
}

impl Drop for TursoFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TursoFake {
    pub fn start() -> TursoFake {
        TursoFake::start_with(&[])
    }

    /// With extra command-line flags (`--txn-timeout 1.0`, `--max-response-size N`, …).
    pub fn start_with(extra: &[&str]) -> TursoFake {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/turso_fake.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--data",
                dir.path().join("data").to_str().unwrap(),
                "--org",
                ORG,
                "--api-token",
                API_TOKEN,
                "--group",
                "default",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 tests/fakes/turso_fake.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("fake's READY line");
        let port = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("fake said {line:?}"))
            .to_string();
        TursoFake {
            child,
            dir,
            api_url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    fn call(&self, method: reqwest::Method, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        guard::runtime::block_on(async {
            let mut rb = self.http.request(method, url);
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let r = rb.send().await.expect("fake answers");
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    /// Create an empty database (test-only admin route); returns its SQLite file.
    pub fn create_db(&self, name: &str) -> PathBuf {
        let (s, v) = self.call(
            reqwest::Method::POST,
            &format!("{}/_fake/databases", self.api_url),
            None,
            Some(json!({"name": name})),
        );
        assert_eq!(s, 200, "{v}");
        PathBuf::from(v["path"].as_str().unwrap())
    }

    /// Every database the fake holds, with `Name`, `Hostname`, `parent` and `path`.
    pub fn databases(&self) -> Vec<Value> {
        let (_, v) = self.call(
            reqwest::Method::GET,
            &format!("{}/_fake/databases", self.api_url),
            None,
            None,
        );
        v["databases"].as_array().unwrap().clone()
    }

    pub fn db(&self, name: &str) -> Option<Value> {
        self.databases().into_iter().find(|d| d["Name"] == name)
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from(
            self.db(name).unwrap_or_else(|| panic!("no database {name}"))["path"]
                .as_str()
                .unwrap(),
        )
    }

    /// Make another client take every name starting with `prefix` just before it is created.
    pub fn squat(&self, prefix: &str) {
        let (s, v) = self.call(
            reqwest::Method::POST,
            &format!("{}/_fake/squat", self.api_url),
            None,
            Some(json!({"prefix": prefix})),
        );
        assert_eq!(s, 200, "{v}");
    }

    /// Change the fake's behaviour at run time (`POST /_fake/config`, see the fake's header).
    pub fn config(&self, v: Value) {
        let (s, r) = self.call(
            reqwest::Method::POST,
            &format!("{}/_fake/config", self.api_url),
            None,
            Some(v),
        );
        assert_eq!(s, 200, "{r}");
    }

    /// Another writer takes and releases `name`'s write lock every 20 ms, so a write
    /// transaction older than the window is rolled back (as sqld does when a writer waits).
    pub fn contend(&self, name: &str) {
        let (s, r) = self.call(
            reqwest::Method::POST,
            &format!("{}/_fake/contend", self.api_url),
            None,
            Some(json!({"name": name, "interval": 0.02})),
        );
        assert_eq!(s, 200, "{r}");
    }

    pub fn stop_contending(&self, name: &str) {
        let (s, r) = self.call(
            reqwest::Method::POST,
            &format!("{}/_fake/contend", self.api_url),
            None,
            Some(json!({"name": name, "stop": true})),
        );
        assert_eq!(s, 200, "{r}");
    }

    /// The Platform API requests the fake received.
    pub fn requests(&self) -> Vec<Value> {
        let (_, v) = self.call(
            reqwest::Method::GET,
            &format!("{}/_fake/requests", self.api_url),
            None,
            None,
        );
        v["requests"].as_array().unwrap().clone()
    }

    /// A Platform API call as a client would make it.
    pub fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(
            method,
            &format!("{}/v1/organizations/{ORG}/databases{path}", self.api_url),
            Some(API_TOKEN),
            body,
        )
    }

    /// Mint a database token through the Platform API.
    pub fn mint(&self, name: &str) -> String {
        let (s, v) = self.api(
            reqwest::Method::POST,
            &format!("/{name}/auth/tokens?expiration=1h&authorization=full-access"),
            None,
        );
        assert_eq!(s, 200, "{v}");
        v["jwt"].as_str().unwrap().to_string()
    }

    /// `http://127.0.0.1:PORT` of a database.
    pub fn url_of(&self, name: &str) -> String {
        format!("http://{}", self.db(name).unwrap()["Hostname"].as_str().unwrap())
    }
}
