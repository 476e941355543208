//! The Platform API: databases, branches and database tokens.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value as Json};

use super::branch::{is_branch_of, is_guard_branch, name_part};
use super::hrana::{json_response, transport, Db, HttpFail};
use super::TursoTarget;
use crate::manifest::TargetRecord;

/// Lifetime of the database tokens guard mints; re-minted after half of it.
pub(super) const TOKEN_EXPIRATION: &str = "2h";

pub(super) const TOKEN_REUSE: Duration = Duration::from_secs(3600);

/// An HTTP `Date` header (`Tue, 01 Dec 2026 22:52:54 GMT`, RFC 9110 IMF-fixdate).
pub(super) fn parse_http_date(s: &str) -> Option<time::OffsetDateTime> {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), &f)
        .ok()
        .map(|t| t.assume_utc())
}

/// What the Platform API says about a database.
#[derive(Debug, Clone)]
pub struct DbInfo {
    pub name: String,
    pub id: String,
    pub hostname: String,
    pub group: Option<String>,
    pub parent: Option<String>,
}

impl DbInfo {
    pub(super) fn from_json(v: &Json) -> Result<DbInfo> {
        let d = &v["database"];
        let s = |k: &str| d[k].as_str().map(String::from);
        Ok(DbInfo {
            name: s("Name").ok_or_else(|| anyhow!("the Platform API answered without database.Name: {v}"))?,
            id: s("DbId").unwrap_or_default(),
            hostname: s("Hostname")
                .ok_or_else(|| anyhow!("the Platform API answered without database.Hostname: {v}"))?,
            group: s("group"),
            parent: d["parent"]["name"].as_str().map(String::from),
        })
    }
}

impl TursoTarget {
    pub(super) fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> std::result::Result<Json, HttpFail> {
        let url = format!(
            "{}/v1/organizations/{}/databases{path}",
            self.api_base, self.t.organization
        );
        crate::runtime::block_on(async {
            let mut rb = self
                .http
                .request(method, &url)
                .bearer_auth(&self.t.api_token)
                .timeout(Duration::from_secs(120));
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let resp = rb.send().await.map_err(transport)?;
            if let Some(date) = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(parse_http_date)
            {
                *self.server_clock.lock().expect("server clock") = Some((date, Instant::now()));
            }
            json_response(resp, "not JSON").await
        })
    }

    /// The Platform API's clock as of now, from the `Date` header of its last answer (which has
    /// whole seconds, truncated, so this is never ahead of the server's clock), or `None` when
    /// no answer carried one.
    pub(super) fn server_now(&self) -> Option<time::OffsetDateTime> {
        let (date, at) = (*self.server_clock.lock().expect("server clock"))?;
        Some(date + at.elapsed())
    }

    /// A Platform API failure as a message that says what to do.
    pub(super) fn explain(&self, f: HttpFail, what: &str) -> anyhow::Error {
        let (org, group) = (&self.t.organization, &self.t.group);
        let m = &f.message;
        match f.status {
            None => anyhow!("{what}: cannot reach the Turso Platform API at {}: {m}", self.api_base),
            Some(401) => anyhow!(
                "{what}: the Platform API token was rejected (HTTP 401: {m}). `api_token` must be a valid Turso Platform API token for organization {org} (create one with `turso auth api-tokens mint guard`), not a database token"
            ),
            Some(403) => anyhow!(
                "{what}: the Platform API token is not allowed to do this (HTTP 403: {m}). guard needs the scopes read, db:create, db:delete and db:mint-token in organization {org}, group {group} (read to look databases up, db:create for branches, db:delete for pruning them, db:mint-token for their tokens)"
            ),
            Some(402) => anyhow!("{what}: refused by the Turso plan (HTTP 402: {m}). Branches count toward the database quota: delete old guard-… branches or raise the plan"),
            Some(404) => anyhow!("{what}: not found (HTTP 404: {m}). Check `organization` ({org}) and `database` ({}) in the policy", self.t.database),
            Some(400) if m.contains("group") => anyhow!("{what}: the Platform API refused the request (HTTP 400: {m}). The policy's group {group:?} must exist in organization {org}"),
            Some(s) => anyhow!("{what}: the Platform API answered HTTP {s}: {m}"),
        }
    }

    /// `GET …/databases/{name}`.
    pub fn get_database(&self, name: &str) -> std::result::Result<DbInfo, anyhow::Error> {
        match self.api(reqwest::Method::GET, &format!("/{name}"), None) {
            Ok(v) => DbInfo::from_json(&v),
            Err(f) => Err(self.explain(
                f,
                &format!("looking up database {name} in organization {}", self.t.organization),
            )),
        }
    }

    /// Like [`get_database`], but `None` when the API says 404.
    pub(super) fn find_database(&self, name: &str) -> Result<Option<DbInfo>> {
        match self.api(reqwest::Method::GET, &format!("/{name}"), None) {
            Ok(v) => Ok(Some(DbInfo::from_json(&v)?)),
            Err(f) if f.status == Some(404) => Ok(None),
            Err(f) => Err(self.explain(
                f,
                &format!("looking up database {name} in organization {}", self.t.organization),
            )),
        }
    }

    /// Create the branch `name` seeded from the source: its current state, or its state at
    /// `timestamp` (point-in-time recovery). The seed names the source as `seed.name`, as the
    /// OpenAPI and the official TypeScript client do (Turso's CLI sends `seed.value`); the
    /// caller reads the branch back to be sure the service took it.
    pub(super) fn create_branch(&self, name: &str, timestamp: Option<&str>) -> Result<DbInfo> {
        let mut seed = json!({"type": "database", "name": self.t.database});
        if let Some(t) = timestamp {
            seed["timestamp"] = json!(t);
        }
        let body = json!({"name": name, "group": self.t.group, "seed": seed});
        let at = timestamp.map(|t| format!(" at {t}")).unwrap_or_default();
        match self.api(reqwest::Method::POST, "", Some(body)) {
            Ok(v) => DbInfo::from_json(&v),
            Err(f) if f.status == Some(409) => Err(anyhow!(
                "creating branch database {name}: the name is taken (HTTP 409: {}). guard names its branches after the snapshot id, so this is a leftover of an earlier guard or a clash; nothing was run. If {name} is guard's leftover, delete it (`turso db destroy {name}`) and run again",
                f.message
            )),
            Err(f) if f.status == Some(422) => Err(anyhow!(
                "creating branch database {name}: the name is not available (HTTP 422: {}). Turso does not allow this name (as its CLI says: \"database name is not available\"); nothing was run. Try again (the next snapshot id gives another name); if it persists, ask Turso why names starting with guard-{} are refused",
                f.message,
                name_part(&self.t.database)
            )),
            Err(f) => Err(self.explain(f, &format!("creating branch database {name} of {}{at}", self.t.database))),
        }
    }

    /// Delete a branch database guard created for this target — the function retention uses
    /// when a snapshot is pruned. Refuses any name that is not guard's own pattern for this
    /// target's database (`guard-<database>-<snapshot id>`), and any database whose parent, as
    /// the Platform API reports it, is another database. Returns whether it existed.
    pub fn delete_branch(&self, name: &str) -> Result<bool> {
        if !is_branch_of(name, &self.t.database) {
            bail!(
                "refusing to delete Turso database {name:?}: it is not a branch guard created for {} (guard-{}-<snapshot id>)",
                self.t.database,
                name_part(&self.t.database)
            );
        }
        let Some(info) = self.find_database(name)? else {
            return Ok(false);
        };
        if let Some(p) = &info.parent {
            if p != &self.t.database {
                bail!(
                    "refusing to delete Turso database {name}: its parent is {p}, not {}",
                    self.t.database
                );
            }
        }
        match self.api(reqwest::Method::DELETE, &format!("/{name}"), None) {
            Ok(_) => {
                self.tokens.lock().expect("tokens").remove(name);
                Ok(true)
            }
            Err(f) if f.status == Some(404) => Ok(false),
            Err(f) => Err(self.explain(f, &format!("deleting branch database {name}"))),
        }
    }

    /// A full-access token for `name`: the policy's `db_token` for the source, otherwise one
    /// minted through the Platform API (kept in memory only, masked in all output).
    pub(super) fn token_for(&self, name: &str) -> Result<String> {
        if name == self.t.database {
            if let Some(t) = &self.t.db_token {
                return Ok(t.clone());
            }
        }
        let mut tokens = self.tokens.lock().expect("tokens");
        if let Some((t, at)) = tokens.get(name) {
            if at.elapsed() < TOKEN_REUSE {
                return Ok(t.clone());
            }
        }
        let path = format!("/{name}/auth/tokens?expiration={TOKEN_EXPIRATION}&authorization=full-access");
        let v = self
            .api(reqwest::Method::POST, &path, None)
            .map_err(|f| self.explain(f, &format!("minting a database token for {name}")))?;
        let jwt = v["jwt"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("minting a database token for {name}: no jwt in the answer"))?
            .to_string();
        crate::secrets::register(&jwt);
        tokens.insert(name.to_string(), (jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    pub(super) fn source_db(&self) -> Result<Db> {
        let url = {
            let mut cached = self.source_url.lock().expect("source url");
            match &*cached {
                Some(u) => u.clone(),
                None => {
                    let u = match &self.t.db_url {
                        Some(u) => self.hrana_url(u),
                        None => self.hrana_url(&self.get_database(&self.t.database)?.hostname),
                    };
                    *cached = Some(u.clone());
                    u
                }
            }
        };
        Ok(Db {
            http: self.http.clone(),
            url,
            token: self.token_for(&self.t.database)?,
            label: format!("source database {}", self.t.database),
        })
    }

    pub(super) fn branch_db(&self, info: &DbInfo) -> Result<Db> {
        Ok(Db {
            http: self.http.clone(),
            url: self.hrana_url(&info.hostname),
            token: self.token_for(&info.name)?,
            label: format!("branch database {}", info.name),
        })
    }

    /// The recorded branch of a snapshot, `None` when it no longer exists.
    pub(super) fn find_recorded_branch(&self, rec: &TargetRecord) -> Result<Option<DbInfo>> {
        let name = rec
            .meta
            .get("branch")
            .ok_or_else(|| anyhow!("the snapshot of {} records no branch database", rec.name))?;
        if !is_guard_branch(name) {
            bail!(
                "the snapshot of {} records {name:?}, which is not a guard branch name",
                rec.name
            );
        }
        self.find_database(name)
    }

    /// The recorded branch of a snapshot, which must still exist.
    pub(super) fn recorded_branch(&self, rec: &TargetRecord) -> Result<DbInfo> {
        self.find_recorded_branch(rec)?.ok_or_else(|| {
            anyhow!(
                "branch database {} of this snapshot no longer exists in organization {} (deleted outside guard?)",
                rec.meta.get("branch").map(String::as_str).unwrap_or("?"),
                self.t.organization
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_read() {
        let t = parse_http_date("Tue, 01 Dec 2026 22:52:54 GMT").unwrap();
        assert_eq!(crate::clock::rfc3339(t), "2026-12-01T22:52:54Z");
        assert!(parse_http_date("yesterday").is_none());
    }
}
