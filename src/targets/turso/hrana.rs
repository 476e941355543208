//! HTTP: errors of the Platform API and Hrana, and Hrana pipelines ([`Db`], [`Stream`]) over
//! HTTP.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value as Json};

use crate::targets::sql::{page, ResponseTooLarge, Rows, Sql, Val, ValRef};

/// A failed HTTP exchange: the status and the service's own message (and code, when it sent
/// one), or no status when the service could not be reached.
#[derive(Debug)]
pub(super) struct HttpFail {
    pub(super) status: Option<u16>,
    pub(super) message: String,
    pub(super) code: Option<String>,
}

/// The message (and code) of an error body, in the three shapes Turso's servers use: the
/// Platform API's `{"error": "…"}` (and `{"error": {"message"}}`), sqld's Hrana stream errors
/// `{"message": "…", "code": "…"}` (libsql-server hrana/http/mod.rs `stream_error_response`),
/// and sqld's protocol errors as plain text (`protocol_error_response`).
pub(super) fn error_body(text: &str) -> (String, Option<String>) {
    let v = serde_json::from_str::<Json>(text).ok();
    let s = |x: Option<&Json>| x.and_then(Json::as_str).map(String::from);
    if let Some(v) = &v {
        if let Some(m) = s(v.get("error")).or_else(|| s(v.get("error").and_then(|e| e.get("message")))) {
            return (m, s(v.get("error").and_then(|e| e.get("code"))));
        }
        if let Some(m) = s(v.get("message")) {
            return (m, s(v.get("code")));
        }
    }
    let t = text.trim();
    if t.is_empty() {
        ("(no message)".into(), None)
    } else {
        (t.chars().take(300).collect(), None)
    }
}

/// What an error code of sqld means for guard, in words (libsql-server hrana/stmt.rs,
/// hrana/http/stream.rs, connection/connection_manager.rs).
pub(super) fn code_hint(code: &str) -> &'static str {
    match code {
        "STREAM_EXPIRED" => " — the server closed the Hrana stream after 10 s without a request and rolled back its transaction; nothing of that transaction was kept",
        "TRANSACTION_TIMEOUT" => " — the server rolled back a write transaction that held the write lock longer than its window (5 s on Turso) while another writer waited; nothing of that transaction was kept",
        "RESPONSE_TOO_LARGE" => " — the answer would exceed the server's response size limit (10 MB by default in sqld)",
        "TRANSACTION_BUSY" => " — the server has too many open transactions; try again",
        _ => "",
    }
}

/// `message [CODE]` plus what the code means.
fn with_code(message: &str, code: Option<&str>) -> String {
    match code {
        Some(c) => format!("{message} [{c}]{}", code_hint(c)),
        None => message.to_string(),
    }
}

pub(super) fn transport(e: reqwest::Error) -> HttpFail {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    HttpFail {
        status: None,
        message: msg,
        code: None,
    }
}

/// The JSON body of a successful response; otherwise the status and the API's own message.
pub(super) async fn json_response(resp: reqwest::Response, not_json: &str) -> std::result::Result<Json, HttpFail> {
    let status = resp.status();
    let text = resp.text().await.map_err(transport)?;
    if !status.is_success() {
        let (message, code) = error_body(&text);
        return Err(HttpFail {
            status: Some(status.as_u16()),
            message,
            code,
        });
    }
    serde_json::from_str(&text).map_err(|e| HttpFail {
        status: Some(status.as_u16()),
        message: format!("{not_json}: {e}"),
        code: None,
    })
}

/// A database's Hrana endpoint and the token for it.
pub(super) struct Db {
    pub(super) http: reqwest::Client,
    /// `https://host` (no trailing slash).
    pub(super) url: String,
    pub(super) token: String,
    /// "source database X" / "branch database Y", for messages.
    pub(super) label: String,
}

impl Db {
    pub(super) fn pipeline(&self, base: &str, body: &Json) -> std::result::Result<Json, HttpFail> {
        let url = format!("{base}/v2/pipeline");
        crate::runtime::block_on(async {
            let resp = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
                .map_err(transport)?;
            json_response(resp, "not a Hrana response").await
        })
    }

    pub(super) fn fail(&self, f: HttpFail) -> anyhow::Error {
        match f.status {
            None => anyhow!("{}: cannot reach {}: {}", self.label, self.url, f.message),
            Some(401) => anyhow!(
                "{}: the database token was rejected (HTTP 401: {})",
                self.label,
                f.message
            ),
            Some(s) => anyhow!(
                "{}: HTTP {s} from {}/v2/pipeline: {}",
                self.label,
                self.url,
                with_code(&f.message, f.code.as_deref())
            ),
        }
    }

    pub(super) fn stream(&self) -> Stream<'_> {
        Stream {
            db: self,
            baton: None,
            base: None,
            closed: false,
            started: false,
        }
    }

    /// Does the database answer `SELECT 1`? Retries while it is unreachable or answers 5xx/404
    /// (a new database can take a moment to be served), for at most `patience`; with
    /// `new_token`, also a 401 for up to [`NEW_TOKEN_PATIENCE`] (a token minted for a database
    /// created a moment ago may not be accepted at once).
    pub(super) fn answer(&self, patience: Duration, new_token: bool) -> Result<()> {
        let start = Instant::now();
        let deadline = start + patience;
        let mut wait = Duration::from_millis(200);
        let body = json!({"baton": null, "requests": [
            {"type": "execute", "stmt": {"sql": "SELECT 1"}}, {"type": "close"}]});
        loop {
            match self.pipeline(&self.url, &body) {
                Ok(r) => {
                    let res = &r["results"][0];
                    if res["type"] == "ok" && res["response"]["result"]["rows"][0][0]["value"] == "1" {
                        return Ok(());
                    }
                    bail!("{}: SELECT 1 did not answer 1: {}", self.label, res);
                }
                Err(f)
                    if (f.status.is_none()
                        || f.status == Some(404)
                        || f.status.is_some_and(|s| s >= 500)
                        || (new_token && f.status == Some(401) && start.elapsed() + wait < NEW_TOKEN_PATIENCE))
                        && Instant::now() + wait < deadline =>
                {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(3));
                }
                Err(f) => return Err(self.fail(f)),
            }
        }
    }

    /// `GET /dump?preserve_row_ids=true`: the database as SQL text, one transaction, with the
    /// rowids of tables that have no INTEGER PRIMARY KEY (sqld renumbers them without the
    /// parameter: libsql-server http/user/dump.rs, connection/dump/exporter.rs).
    pub(super) fn dump(&self) -> Result<reqwest::Response> {
        let url = format!("{}/dump?preserve_row_ids=true", self.url);
        crate::runtime::block_on(async {
            let resp = self
                .http
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let text = resp.text().await.unwrap_or_default();
            let (message, code) = error_body(&text);
            Err(HttpFail {
                status: Some(status.as_u16()),
                message,
                code,
            })
        })
        .map_err(|f| match f.status {
            None => anyhow!("{}: cannot reach {url}: {}", self.label, f.message),
            Some(401) => anyhow!(
                "{}: the database token was rejected by /dump (HTTP 401: {})",
                self.label,
                f.message
            ),
            Some(s) => anyhow!("{}: HTTP {s} from {url}: {}", self.label, f.message),
        })
    }
}

/// How long a 401 from a database created a moment ago is retried.
pub(super) const NEW_TOKEN_PATIENCE: Duration = Duration::from_secs(10);

/// One Hrana stream: a connection (and its transaction) kept between requests by the baton.
pub(super) struct Stream<'a> {
    pub(super) db: &'a Db,
    pub(super) baton: Option<String>,
    pub(super) base: Option<String>,
    pub(super) closed: bool,
    pub(super) started: bool,
}

pub(super) fn shorten(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 120 {
        format!("{}…", one.chars().take(120).collect::<String>())
    } else {
        one
    }
}

pub(super) fn stmt(sql: &str, args: &[Val]) -> Json {
    if args.is_empty() {
        json!({"sql": sql})
    } else {
        json!({"sql": sql, "args": args.iter().map(Val::to_json).collect::<Vec<_>>()})
    }
}

pub(super) fn parse_rows(result: &Json) -> Result<Rows> {
    let cols = result["cols"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for r in result["rows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let vals = r.as_array().ok_or_else(|| anyhow!("malformed Hrana row {r}"))?;
        rows.push(vals.iter().map(Val::from_json).collect::<Result<Vec<_>>>()?);
    }
    Ok(Rows { cols, rows })
}

impl Stream<'_> {
    pub(super) fn send(&mut self, requests: Vec<Json>) -> Result<Vec<Json>> {
        if self.closed {
            bail!(
                "{}: the Hrana stream was closed by the server (its transaction is gone)",
                self.db.label
            );
        }
        if self.started && self.baton.is_none() {
            self.closed = true;
            bail!(
                "{}: the Hrana stream was closed by the server (its transaction is gone)",
                self.db.label
            );
        }
        let base = self.base.clone().unwrap_or_else(|| self.db.url.clone());
        let body = json!({"baton": self.baton, "requests": requests});
        let n = requests_len(&body);
        let resp = self.db.pipeline(&base, &body).map_err(|f| self.db.fail(f))?;
        self.started = true;
        self.baton = resp["baton"].as_str().map(String::from);
        if let Some(b) = resp["base_url"].as_str() {
            self.base = Some(b.trim_end_matches('/').to_string());
        }
        let results = resp["results"].as_array().cloned().unwrap_or_default();
        if results.len() != n {
            bail!(
                "{}: Hrana answered {} results to {n} requests",
                self.db.label,
                results.len()
            );
        }
        Ok(results)
    }

    pub(super) fn execute(&mut self, sql: &str, args: &[Val]) -> Result<Rows> {
        let r = self.send(vec![json!({"type": "execute", "stmt": stmt(sql, args)})])?;
        match r[0]["type"].as_str() {
            Some("ok") => parse_rows(&r[0]["response"]["result"]),
            _ => Err(self.step_error(sql, &r[0]["error"])),
        }
    }

    /// An in-band error of `sql` as a message; `RESPONSE_TOO_LARGE` as [`ResponseTooLarge`],
    /// so that readers can page smaller.
    fn step_error(&self, sql: &str, e: &Json) -> anyhow::Error {
        let code = e["code"].as_str();
        let msg = format!(
            "{}: `{}` failed: {}",
            self.db.label,
            shorten(sql),
            with_code(e["message"].as_str().unwrap_or("unknown error"), code.or(Some("-")))
        );
        if code == Some("RESPONSE_TOO_LARGE") {
            anyhow::Error::new(ResponseTooLarge(msg))
        } else {
            anyhow!(msg)
        }
    }

    /// Run `stmts` as one write transaction in one request: a batch of `BEGIN IMMEDIATE`, each
    /// statement only if the one before succeeded, `COMMIT`, and a `ROLLBACK` that runs when
    /// the `COMMIT` did not. The transaction lives as long as the server takes for this one
    /// request, never across round trips (Turso gives a write transaction 5 s).
    pub(super) fn transaction(&mut self, stmts: &[(String, Vec<Val>)]) -> Result<()> {
        let mut all: Vec<(String, Vec<Val>)> = Vec::with_capacity(stmts.len() + 2);
        all.push(("BEGIN IMMEDIATE".into(), Vec::new()));
        all.extend(stmts.iter().cloned());
        all.push(("COMMIT".into(), Vec::new()));
        let commit = all.len() - 1;
        let mut steps: Vec<Json> = all
            .iter()
            .enumerate()
            .map(|(i, (sql, args))| {
                if i == 0 {
                    json!({"stmt": stmt(sql, args)})
                } else {
                    json!({"condition": {"type": "ok", "step": i - 1}, "stmt": stmt(sql, args)})
                }
            })
            .collect();
        steps.push(
            json!({"condition": {"type": "not", "cond": {"type": "ok", "step": commit}}, "stmt": {"sql": "ROLLBACK"}}),
        );
        self.run_batch(&all, steps)
    }

    /// Send a batch; the first failing step of `stmts` (the batch's first steps) is the error.
    fn run_batch(&mut self, stmts: &[(String, Vec<Val>)], steps: Vec<Json>) -> Result<()> {
        let r = self.send(vec![json!({"type": "batch", "batch": {"steps": steps}})])?;
        if r[0]["type"] != "ok" {
            bail!(
                "{}: batch refused: {}",
                self.db.label,
                with_code(
                    r[0]["error"]["message"].as_str().unwrap_or("unknown error"),
                    r[0]["error"]["code"].as_str()
                )
            );
        }
        let res = &r[0]["response"]["result"];
        let errors = res["step_errors"].as_array().cloned().unwrap_or_default();
        let results = res["step_results"].as_array().cloned().unwrap_or_default();
        for (i, (sql, _)) in stmts.iter().enumerate() {
            if let Some(e) = errors.get(i).filter(|e| !e.is_null()) {
                return Err(self.step_error(sql, e));
            }
            if results.get(i).is_none_or(Json::is_null) {
                bail!("{}: `{}` did not run", self.db.label, shorten(sql));
            }
        }
        Ok(())
    }

    pub(super) fn close(&mut self) {
        if !self.closed && self.started && self.baton.is_some() {
            let _ = self.send(vec![json!({"type": "close"})]);
        }
        self.closed = true;
    }
}

pub(super) fn requests_len(body: &Json) -> usize {
    body["requests"].as_array().map(Vec::len).unwrap_or(0)
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

impl Sql for Stream<'_> {
    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Rows> {
        self.execute(sql, args)
    }

    /// In pages of [`page::PAGE`] rows, one Hrana request each.
    fn each_row(&mut self, table: &str, is_table: bool, f: &mut dyn FnMut(&[ValRef<'_>])) -> Result<()> {
        page::each_row_paged(self, table, is_table, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_shape_are_read() {
        // Platform API and sqld's auth errors.
        assert_eq!(
            error_body(r#"{"error":"could not find database with name x"}"#),
            ("could not find database with name x".into(), None)
        );
        assert_eq!(
            error_body(r#"{"error":{"message":"m","code":"C"}}"#),
            ("m".into(), Some("C".into()))
        );
        // sqld's stream errors (hrana/http/mod.rs stream_error_response).
        assert_eq!(
            error_body(r#"{"message":"The stream has expired due to inactivity","code":"STREAM_EXPIRED"}"#),
            (
                "The stream has expired due to inactivity".into(),
                Some("STREAM_EXPIRED".into())
            )
        );
        // sqld's protocol errors are text/plain.
        assert_eq!(
            error_body("Received an invalid baton\n"),
            ("Received an invalid baton".into(), None)
        );
        assert_eq!(error_body("  "), ("(no message)".into(), None));
    }

    #[test]
    fn sqld_error_codes_are_explained() {
        let f = |code: &str| with_code("m", Some(code));
        assert!(
            f("STREAM_EXPIRED").contains("10 s without a request") && f("STREAM_EXPIRED").contains("[STREAM_EXPIRED]")
        );
        assert!(f("TRANSACTION_TIMEOUT").contains("window") && f("TRANSACTION_TIMEOUT").contains("rolled back"));
        assert!(f("RESPONSE_TOO_LARGE").contains("response size limit"));
        assert_eq!(f("SQLITE_CONSTRAINT"), "m [SQLITE_CONSTRAINT]");
        assert_eq!(with_code("m", None), "m");
    }
}
