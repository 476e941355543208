//! Turso (libSQL) databases, through the Platform API and Hrana over HTTP; no turso CLI.
//!
//! Snapshot: the Platform API creates a *branch* database seeded from the source at the
//! snapshot's timestamp (`POST /v1/organizations/{org}/databases` with a `database` seed), named
//! `guard-<database>-<snapshot id>` so it is recognisably guard's and traceable to its snapshot.
//! guard confirms the branch answers `SELECT 1`, records its fingerprints (row counts of every
//! table, content hashes of the tables `untouched` checks name, a schema hash — read from the
//! branch, so they describe exactly the state a restore brings back) and, with `export = true`,
//! streams the branch's `GET /dump` through gzip into the store so a copy exists outside Turso.
//!
//! Restore: Turso cannot restore a database in place. `reload` (the default) replaces every
//! table, index, trigger and view of the source with the branch's, rows copied with their typed
//! values, in one transaction on one Hrana stream; then the source's fingerprints are compared
//! with the snapshot's and every table's content hash with the branch's; when the branch no
//! longer exists, the export is loaded into a scratch SQLite file and copied the same way.
//! `promote` leaves the source alone and says exactly what to repoint at the branch; guard
//! reports that restore as not automatic.
//!
//! URLs: a database's Hrana URL is `db_url` when the policy gives one, otherwise its `Hostname`
//! from the Platform API. `libsql://` and bare hostnames take the scheme of `api_url`: `https`
//! for the real service, `http` when `api_url` is a plain-HTTP local endpoint (the test fake).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value as Json};
use sha2::{Digest as _, Sha256};

use super::sqlite::{compare_fingerprints, quote_ident};
use super::{SnapshotCtx, Target};
use crate::artifact::read_artifact;
use crate::manifest::{Fingerprint, TargetRecord};
use crate::policy::{TargetKind, TargetSpec, TursoRestore, TursoSpec};
use crate::store::Store;

/// Every database guard creates starts with this.
pub const BRANCH_PREFIX: &str = "guard-";
/// Turso's limit on database names.
const MAX_NAME: usize = 64;
/// Rows per Hrana request when reading or copying a table.
const PAGE: usize = 500;
/// Lifetime of the database tokens guard mints; re-minted after half of it.
const TOKEN_EXPIRATION: &str = "2h";
const TOKEN_REUSE: Duration = Duration::from_secs(3600);
/// How long a new branch may take to answer before the snapshot fails.
const BRANCH_READY: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Branch names

/// `20261123T164800.123Z-a3f2` → `20261123t164800123z-a3f2`.
fn compact_id(snapshot_id: &str) -> String {
    snapshot_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Is `s` a compact snapshot id (`20261123t164800123z-a3f2`)?
fn is_compact_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b't'
        && b[9..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'z'
        && b[19] == b'-'
        && b[20..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The part of a database name that goes into a branch name: Turso's alphabet, trimmed so the
/// whole name fits in 64 characters.
fn name_part(database: &str) -> String {
    let keep = MAX_NAME - BRANCH_PREFIX.len() - 1 - 24;
    let s: String = database
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(keep)
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "db".into()
    } else {
        s
    }
}

/// The branch database guard creates for `database` in snapshot `snapshot_id`:
/// `guard-<database, truncated>-<snapshot id, compacted>` — lowercase letters, digits and
/// dashes, at most 64 characters.
pub fn branch_name(database: &str, snapshot_id: &str) -> String {
    format!("{BRANCH_PREFIX}{}-{}", name_part(database), compact_id(snapshot_id))
}

/// Is `name` a branch guard created (of any database)?
pub fn is_guard_branch(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.len() > BRANCH_PREFIX.len() + 25
        && name.starts_with(BRANCH_PREFIX)
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && is_compact_id(&name[name.len() - 24..])
        && name.as_bytes()[name.len() - 25] == b'-'
}

/// The snapshot id a guard branch was named after (`20261123T164800.123Z-a3f2`).
pub fn snapshot_id_of_branch(name: &str) -> Option<String> {
    if !is_guard_branch(name) {
        return None;
    }
    let c = &name[name.len() - 24..];
    Some(format!("{}T{}.{}Z-{}", &c[..8], &c[9..15], &c[15..18], &c[20..]))
}

/// Is `name` the branch guard would create for `database` (in some snapshot)?
fn is_branch_of(name: &str, database: &str) -> bool {
    snapshot_id_of_branch(name).is_some_and(|id| branch_name(database, &id) == name)
}

// ---------------------------------------------------------------------------------------------
// Values of Hrana and SQLite

/// A typed SQLite value as Hrana carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

fn b64() -> base64::engine::GeneralPurpose {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

impl Val {
    /// Hrana JSON: integers as strings, blobs as unpadded base64.
    pub fn to_json(&self) -> Json {
        match self {
            Val::Null => json!({"type": "null"}),
            Val::Int(i) => json!({"type": "integer", "value": i.to_string()}),
            Val::Float(f) => json!({"type": "float", "value": f}),
            Val::Text(s) => json!({"type": "text", "value": s}),
            Val::Blob(b) => json!({"type": "blob", "base64": b64().encode(b)}),
        }
    }

    pub fn from_json(v: &Json) -> Result<Val> {
        let bad = || anyhow!("malformed Hrana value {v}");
        Ok(match v.get("type").and_then(Json::as_str).ok_or_else(bad)? {
            "null" => Val::Null,
            "integer" => {
                let s = v.get("value").ok_or_else(bad)?;
                match s {
                    Json::String(s) => Val::Int(s.parse().map_err(|_| bad())?),
                    Json::Number(n) => Val::Int(n.as_i64().ok_or_else(bad)?),
                    _ => return Err(bad()),
                }
            }
            "float" => Val::Float(v.get("value").and_then(Json::as_f64).ok_or_else(bad)?),
            "text" => Val::Text(v.get("value").and_then(Json::as_str).ok_or_else(bad)?.to_string()),
            "blob" => Val::Blob(
                b64()
                    .decode(v.get("base64").and_then(Json::as_str).ok_or_else(bad)?)
                    .map_err(|_| bad())?,
            ),
            _ => return Err(bad()),
        })
    }

    /// As `sql` checks show a value (the same rendering as SQLite targets).
    pub fn to_text(&self) -> String {
        match self {
            Val::Null => "NULL".into(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Text(t) => t.clone(),
            Val::Blob(b) => format!("x'{}'", hex::encode(b)),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Add one row's typed values to a running fingerprint: exactly the hashing of SQLite targets
/// (tag byte, then little-endian value or length-prefixed bytes; first 128 bits of SHA-256,
/// summed), so equal data gives equal fingerprints whichever target kind read it.
fn row_digest(vals: &[Val]) -> u128 {
    let mut h = Sha256::new();
    for v in vals {
        match v {
            Val::Null => h.update([0u8]),
            Val::Int(i) => {
                h.update([1u8]);
                h.update(i.to_le_bytes());
            }
            Val::Float(f) => {
                h.update([2u8]);
                h.update(f.to_bits().to_le_bytes());
            }
            Val::Text(t) => {
                h.update([3u8]);
                h.update((t.len() as u64).to_le_bytes());
                h.update(t.as_bytes());
            }
            Val::Blob(b) => {
                h.update([4u8]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
        }
    }
    let d = h.finalize();
    u128::from_le_bytes(d[..16].try_into().expect("16 bytes"))
}

/// Rows of a statement.
#[derive(Debug, Default)]
pub struct Rows {
    pub cols: Vec<String>,
    pub rows: Vec<Vec<Val>>,
}

impl Rows {
    fn first(&self) -> Option<&Val> {
        self.rows.first().and_then(|r| r.first())
    }
}

/// Anything that runs a statement and returns its rows: a Hrana stream, or a local SQLite file
/// (to check an export).
trait Sql {
    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Rows>;
}

impl Sql for rusqlite::Connection {
    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Rows> {
        use rusqlite::types::{Value, ValueRef};
        let mut st = self.prepare(sql)?;
        let cols: Vec<String> = st.column_names().iter().map(|s| s.to_string()).collect();
        let params: Vec<Value> = args
            .iter()
            .map(|v| match v {
                Val::Null => Value::Null,
                Val::Int(i) => Value::Integer(*i),
                Val::Float(f) => Value::Real(*f),
                Val::Text(s) => Value::Text(s.clone()),
                Val::Blob(b) => Value::Blob(b.clone()),
            })
            .collect();
        let mut q = st.query(rusqlite::params_from_iter(params))?;
        let mut rows = Vec::new();
        while let Some(r) = q.next()? {
            let mut row = Vec::with_capacity(cols.len());
            for i in 0..cols.len() {
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(i) => Val::Int(i),
                    ValueRef::Real(f) => Val::Float(f),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                });
            }
            rows.push(row);
        }
        Ok(Rows { cols, rows })
    }
}

// ---------------------------------------------------------------------------------------------
// Fingerprints, over any `Sql`

fn user_tables(c: &mut dyn Sql) -> Result<Vec<String>> {
    let r = c.rows(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        &[],
    )?;
    Ok(r.rows
        .iter()
        .filter_map(|r| r.first().and_then(Val::as_str).map(String::from))
        .collect())
}

/// Column of a table as `pragma_table_xinfo` describes it.
struct Column {
    name: String,
    decl: String,
    pk: i64,
    hidden: i64,
}

fn columns(c: &mut dyn Sql, table: &str) -> Result<Vec<Column>> {
    let r = c.rows(
        "SELECT name, coalesce(type, ''), pk, hidden FROM pragma_table_xinfo(?1)",
        &[Val::Text(table.into())],
    )?;
    Ok(r.rows
        .iter()
        .map(|r| Column {
            name: r[0].as_str().unwrap_or_default().to_string(),
            decl: r[1].as_str().unwrap_or_default().to_string(),
            pk: r[2].as_int().unwrap_or(0),
            hidden: r[3].as_int().unwrap_or(0),
        })
        .collect())
}

/// How to read a table in pages: by a rowid name no column shadows, or (views, WITHOUT ROWID
/// tables) by ordered offsets.
enum Paging {
    Rowid(String),
    Offset(String),
}

fn paging(c: &mut dyn Sql, table: &str, is_table: bool, cols: &[Column]) -> Result<Paging> {
    if is_table {
        for alias in ["rowid", "_rowid_", "oid"] {
            if cols.iter().any(|c| c.name.eq_ignore_ascii_case(alias)) {
                continue;
            }
            // WITHOUT ROWID tables have none: the probe fails.
            if c.rows(&format!("SELECT {alias} FROM {} LIMIT 0", quote_ident(table)), &[])
                .is_ok()
            {
                return Ok(Paging::Rowid(alias.to_string()));
            }
            break;
        }
    }
    let mut pk: Vec<&Column> = cols.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    let order = if pk.is_empty() {
        (1..=cols.iter().filter(|c| c.hidden == 0).count().max(1))
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        pk.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    };
    Ok(Paging::Offset(order))
}

/// Call `f` with every page of `SELECT <select> FROM table`, in a stable order. With rowid
/// paging the first value of each row is the rowid (not part of `select`).
fn for_each_page(
    c: &mut dyn Sql,
    table: &str,
    select: &str,
    paging: &Paging,
    mut f: impl FnMut(&[Vec<Val>]) -> Result<()>,
) -> Result<()> {
    let t = quote_ident(table);
    match paging {
        Paging::Rowid(alias) => {
            let mut last: Option<i64> = None;
            loop {
                let r = match last {
                    None => c.rows(
                        &format!("SELECT {alias}, {select} FROM {t} ORDER BY {alias} LIMIT {PAGE}"),
                        &[],
                    )?,
                    Some(l) => c.rows(
                        &format!("SELECT {alias}, {select} FROM {t} WHERE {alias} > ?1 ORDER BY {alias} LIMIT {PAGE}"),
                        &[Val::Int(l)],
                    )?,
                };
                if r.rows.is_empty() {
                    return Ok(());
                }
                last = Some(
                    r.rows
                        .last()
                        .and_then(|r| r[0].as_int())
                        .ok_or_else(|| anyhow!("{table}: rowid is not an integer"))?,
                );
                f(&r.rows)?;
                if r.rows.len() < PAGE {
                    return Ok(());
                }
            }
        }
        Paging::Offset(order) => {
            let mut offset = 0usize;
            loop {
                let r = c.rows(
                    &format!("SELECT {select} FROM {t} ORDER BY {order} LIMIT {PAGE} OFFSET {offset}"),
                    &[],
                )?;
                if r.rows.is_empty() {
                    return Ok(());
                }
                offset += r.rows.len();
                f(&r.rows)?;
                if r.rows.len() < PAGE {
                    return Ok(());
                }
            }
        }
    }
}

/// Row count and order-independent content hash of a table or view (as SQLite targets compute
/// it over `SELECT *`).
fn table_fingerprint(c: &mut dyn Sql, table: &str) -> Result<Fingerprint> {
    let kind = c.rows(
        "SELECT type FROM sqlite_master WHERE type IN ('table','view') AND name = ?1",
        &[Val::Text(table.into())],
    )?;
    let Some(kind) = kind.first().and_then(Val::as_str).map(String::from) else {
        bail!("table {table:?} does not exist");
    };
    let cols = columns(c, table)?;
    let paging = paging(c, table, kind == "table", &cols)?;
    let skip = usize::from(matches!(paging, Paging::Rowid(_)));
    let mut sum: u128 = 0;
    let mut count = 0u64;
    for_each_page(c, table, "*", &paging, |rows| {
        for r in rows {
            sum = sum.wrapping_add(row_digest(&r[skip..]));
            count += 1;
        }
        Ok(())
    })?;
    Ok(Fingerprint {
        rows: count,
        hash: Some(format!("{sum:032x}")),
    })
}

/// Hash of every CREATE statement, the `@schema` fingerprint (as SQLite targets compute it).
fn schema_fingerprint(c: &mut dyn Sql) -> Result<Fingerprint> {
    let r = c.rows(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        &[],
    )?;
    let mut h = Sha256::new();
    for row in &r.rows {
        for v in row.iter().take(3) {
            let s = v.as_str().unwrap_or_default();
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    Ok(Fingerprint {
        rows: r.rows.len() as u64,
        hash: Some(hex::encode(&h.finalize()[..16])),
    })
}

/// Row counts of every table, content hashes of `hashed`, and the schema hash.
fn fingerprints(c: &mut dyn Sql, hashed: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
    let mut out = BTreeMap::new();
    for t in user_tables(c)? {
        if !hashed.contains(&t) {
            let n = c.rows(&format!("SELECT count(*) FROM {}", quote_ident(&t)), &[])?;
            let rows = n
                .first()
                .and_then(Val::as_int)
                .ok_or_else(|| anyhow!("count(*) of {t} returned no integer"))?;
            out.insert(
                t,
                Fingerprint {
                    rows: rows as u64,
                    hash: None,
                },
            );
        }
    }
    for t in hashed {
        out.insert(t.clone(), table_fingerprint(c, t)?);
    }
    out.insert("@schema".into(), schema_fingerprint(c)?);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// HTTP: Platform API and Hrana

/// A failed HTTP exchange: the status and the service's own message, or no status when the
/// service could not be reached.
#[derive(Debug)]
struct HttpFail {
    status: Option<u16>,
    message: String,
}

fn error_message(text: &str) -> String {
    serde_json::from_str::<Json>(text)
        .ok()
        .and_then(|v| {
            v.get("error").and_then(|e| {
                e.as_str()
                    .map(String::from)
                    .or_else(|| e.get("message").and_then(Json::as_str).map(String::from))
            })
        })
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                "(no message)".into()
            } else {
                t.chars().take(300).collect()
            }
        })
}

fn transport(e: reqwest::Error) -> HttpFail {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    HttpFail {
        status: None,
        message: msg,
    }
}

/// The JSON body of a successful response; otherwise the status and the API's own message.
async fn json_response(resp: reqwest::Response, not_json: &str) -> std::result::Result<Json, HttpFail> {
    let status = resp.status();
    let text = resp.text().await.map_err(transport)?;
    if !status.is_success() {
        return Err(HttpFail {
            status: Some(status.as_u16()),
            message: error_message(&text),
        });
    }
    serde_json::from_str(&text).map_err(|e| HttpFail {
        status: Some(status.as_u16()),
        message: format!("{not_json}: {e}"),
    })
}

/// A database's Hrana endpoint and the token for it.
struct Db {
    http: reqwest::Client,
    /// `https://host` (no trailing slash).
    url: String,
    token: String,
    /// "source database X" / "branch database Y", for messages.
    label: String,
}

impl Db {
    fn pipeline(&self, base: &str, body: &Json) -> std::result::Result<Json, HttpFail> {
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

    fn fail(&self, f: HttpFail) -> anyhow::Error {
        match f.status {
            None => anyhow!("{}: cannot reach {}: {}", self.label, self.url, f.message),
            Some(401) => anyhow!(
                "{}: the database token was rejected (HTTP 401: {})",
                self.label,
                f.message
            ),
            Some(s) => anyhow!("{}: HTTP {s} from {}/v2/pipeline: {}", self.label, self.url, f.message),
        }
    }

    fn stream(&self) -> Stream<'_> {
        Stream {
            db: self,
            baton: None,
            base: None,
            closed: false,
            started: false,
        }
    }

    /// Does the database answer `SELECT 1`? Retries while it is unreachable or answers 5xx/404
    /// (a new database can take a moment to be served), for at most `patience`.
    fn answer(&self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
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
                    if (f.status.is_none() || f.status == Some(404) || f.status.is_some_and(|s| s >= 500))
                        && Instant::now() + wait < deadline =>
                {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(3));
                }
                Err(f) => return Err(self.fail(f)),
            }
        }
    }

    /// `GET /dump`: the database as SQL text, one transaction.
    fn dump(&self) -> Result<reqwest::Response> {
        let url = format!("{}/dump", self.url);
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
            Err(HttpFail {
                status: Some(status.as_u16()),
                message: error_message(&text),
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

/// One Hrana stream: a connection (and its transaction) kept between requests by the baton.
struct Stream<'a> {
    db: &'a Db,
    baton: Option<String>,
    base: Option<String>,
    closed: bool,
    started: bool,
}

fn shorten(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 120 {
        format!("{}…", one.chars().take(120).collect::<String>())
    } else {
        one
    }
}

fn stmt(sql: &str, args: &[Val]) -> Json {
    if args.is_empty() {
        json!({"sql": sql})
    } else {
        json!({"sql": sql, "args": args.iter().map(Val::to_json).collect::<Vec<_>>()})
    }
}

fn parse_rows(result: &Json) -> Result<Rows> {
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
    fn send(&mut self, requests: Vec<Json>) -> Result<Vec<Json>> {
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

    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<Rows> {
        let r = self.send(vec![json!({"type": "execute", "stmt": stmt(sql, args)})])?;
        match r[0]["type"].as_str() {
            Some("ok") => parse_rows(&r[0]["response"]["result"]),
            _ => bail!(
                "{}: `{}` failed: {} [{}]",
                self.db.label,
                shorten(sql),
                r[0]["error"]["message"].as_str().unwrap_or("unknown error"),
                r[0]["error"]["code"].as_str().unwrap_or("-")
            ),
        }
    }

    /// Run statements as one Hrana batch, each only if the one before succeeded; the first
    /// failure is the error.
    fn batch(&mut self, stmts: &[(String, Vec<Val>)]) -> Result<()> {
        if stmts.is_empty() {
            return Ok(());
        }
        let steps: Vec<Json> = stmts
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
        let r = self.send(vec![json!({"type": "batch", "batch": {"steps": steps}})])?;
        if r[0]["type"] != "ok" {
            bail!(
                "{}: batch refused: {}",
                self.db.label,
                r[0]["error"]["message"].as_str().unwrap_or("unknown error")
            );
        }
        let res = &r[0]["response"]["result"];
        let errors = res["step_errors"].as_array().cloned().unwrap_or_default();
        let results = res["step_results"].as_array().cloned().unwrap_or_default();
        for (i, (sql, _)) in stmts.iter().enumerate() {
            if let Some(e) = errors.get(i).filter(|e| !e.is_null()) {
                bail!(
                    "{}: `{}` failed: {} [{}]",
                    self.db.label,
                    shorten(sql),
                    e["message"].as_str().unwrap_or("?"),
                    e["code"].as_str().unwrap_or("-")
                );
            }
            if results.get(i).is_none_or(Json::is_null) {
                bail!("{}: `{}` did not run", self.db.label, shorten(sql));
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        if !self.closed && self.started && self.baton.is_some() {
            let _ = self.send(vec![json!({"type": "close"})]);
        }
        self.closed = true;
    }
}

fn requests_len(body: &Json) -> usize {
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
}

/// Streams a `/dump` response as `Read`, remembering its size, start and end.
struct DumpReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
    pos: usize,
    total: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl DumpReader {
    fn new(resp: reqwest::Response) -> Self {
        DumpReader {
            resp,
            buf: Vec::new(),
            pos: 0,
            total: 0,
            head: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl Read for DumpReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match crate::runtime::block_on(self.resp.chunk()) {
                Ok(Some(c)) => {
                    self.buf = c.to_vec();
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "reading the dump: {}",
                        transport(e).message
                    )))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.total += n as u64;
        track(&mut self.head, &mut self.tail, &out[..n]);
        Ok(n)
    }
}

/// Keep the first and last 64 bytes of a stream.
fn track(head: &mut Vec<u8>, tail: &mut Vec<u8>, chunk: &[u8]) {
    if head.len() < 64 {
        let take = (64 - head.len()).min(chunk.len());
        head.extend_from_slice(&chunk[..take]);
    }
    tail.extend_from_slice(chunk);
    if tail.len() > 64 {
        tail.drain(..tail.len() - 64);
    }
}

/// Is this the whole of a SQL dump: one transaction, begun and committed?
fn check_dump(total: u64, head: &[u8], tail: &[u8]) -> Result<()> {
    if total == 0 {
        bail!("the dump is empty");
    }
    let head = String::from_utf8_lossy(head);
    if !(head.starts_with("PRAGMA foreign_keys=OFF;") || head.starts_with("BEGIN TRANSACTION;")) {
        bail!(
            "the dump does not start like a SQL dump ({:?})",
            head.chars().take(30).collect::<String>()
        );
    }
    if !String::from_utf8_lossy(tail).trim_end().ends_with("COMMIT;") {
        bail!("the dump does not end with COMMIT; (truncated)");
    }
    Ok(())
}

/// Decompress an export (checking its checksums and that it is a whole dump) and load it into
/// a new SQLite file at `db`.
fn load_export(store: &dyn Store, a: &crate::manifest::Artifact, db: &Path) -> Result<rusqlite::Connection> {
    let sql_path = db.with_extension("sql");
    let r = (|| -> Result<rusqlite::Connection> {
        {
            let f = std::fs::File::create(&sql_path)?;
            read_artifact(store, a, std::io::BufWriter::new(f))?;
        }
        let sql = std::fs::read(&sql_path)?;
        check_dump(
            sql.len() as u64,
            &sql[..sql.len().min(64)],
            &sql[sql.len().saturating_sub(64)..],
        )?;
        let c = rusqlite::Connection::open(db)?;
        c.execute_batch(std::str::from_utf8(&sql).context("the export is not UTF-8")?)
            .context("the export does not load into SQLite")?;
        Ok(c)
    })()
    .with_context(|| format!("{}/{}", store.location(), a.key));
    let _ = std::fs::remove_file(&sql_path);
    r
}

/// The export loads into an empty SQLite file at `db` and holds the recorded data.
fn check_export(rec: &TargetRecord, store: &dyn Store, a: &crate::manifest::Artifact, db: &Path) -> Result<()> {
    let mut c = load_export(store, a, db)?;
    let got = fingerprints(&mut c, &rec.hashed_items())?;
    compare_fingerprints(&rec.fingerprints, &got)
        .context("the export's data differs from the fingerprints recorded at snapshot time")
        .with_context(|| format!("{}/{}", store.location(), a.key))
}

// ---------------------------------------------------------------------------------------------
// The target

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
    fn from_json(v: &Json) -> Result<DbInfo> {
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

pub struct TursoTarget {
    spec: TargetSpec,
    t: TursoSpec,
    http: reqwest::Client,
    api_base: String,
    /// Database tokens guard minted, by database name.
    tokens: Mutex<BTreeMap<String, (String, Instant)>>,
    source_url: Mutex<Option<String>>,
}

impl TursoTarget {
    pub fn new(spec: TargetSpec, t: TursoSpec) -> Result<Self> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_NAME
                && s.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        };
        if !valid(&t.database) {
            bail!(
                "target {}: database {:?} is not a Turso database name (1-64 lowercase letters, digits and dashes)",
                spec.name,
                t.database
            );
        }
        if !valid(&t.organization) {
            bail!(
                "target {}: organization {:?} is not a Turso organization slug (lowercase letters, digits and dashes)",
                spec.name,
                t.organization
            );
        }
        if !valid(&t.group) {
            bail!("target {}: group {:?} is not a Turso group name", spec.name, t.group);
        }
        if is_guard_branch(&t.database) {
            bail!(
                "target {}: database {:?} is one of guard's own branches; name the database the application uses",
                spec.name,
                t.database
            );
        }
        let api_base = t.api_url.trim_end_matches('/').to_string();
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            bail!(
                "target {}: api_url {:?} must start with https:// (or http:// for a local endpoint)",
                spec.name,
                t.api_url
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(300))
            .user_agent(concat!("guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(TursoTarget {
            spec,
            t,
            http,
            api_base,
            tokens: Mutex::new(BTreeMap::new()),
            source_url: Mutex::new(None),
        })
    }

    /// The target for a policy spec of kind `turso`.
    pub fn from_spec(spec: &TargetSpec) -> Result<Self> {
        match &spec.kind {
            TargetKind::Turso(t) => TursoTarget::new(spec.clone(), t.clone()),
            other => bail!("target {} is of kind {}, not turso", spec.name, other.as_str()),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.api_base.starts_with("http://") {
            "http"
        } else {
            "https"
        }
    }

    /// `libsql://h`, `https://h`, `http://h` or a bare hostname → the Hrana base URL.
    fn hrana_url(&self, u: &str) -> String {
        let u = u.trim_end_matches('/');
        if u.starts_with("https://") || u.starts_with("http://") {
            u.to_string()
        } else {
            let host = u.strip_prefix("libsql://").unwrap_or(u);
            format!("{}://{host}", self.scheme())
        }
    }

    // --- Platform API ---

    fn api(&self, method: reqwest::Method, path: &str, body: Option<Json>) -> std::result::Result<Json, HttpFail> {
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
            json_response(resp, "not JSON").await
        })
    }

    /// A Platform API failure as a message that says what to do.
    fn explain(&self, f: HttpFail, what: &str) -> anyhow::Error {
        let (org, group) = (&self.t.organization, &self.t.group);
        let m = &f.message;
        match f.status {
            None => anyhow!("{what}: cannot reach the Turso Platform API at {}: {m}", self.api_base),
            Some(401) => anyhow!(
                "{what}: the Platform API token was rejected (HTTP 401: {m}). `api_token` must be a valid Turso Platform API token for organization {org} (create one with `turso auth api-tokens mint guard`), not a database token"
            ),
            Some(403) => anyhow!(
                "{what}: the Platform API token is not allowed to do this (HTTP 403: {m}). It needs the db:create, db:delete and db:mint-token scopes in organization {org}, group {group}"
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
    fn find_database(&self, name: &str) -> Result<Option<DbInfo>> {
        match self.api(reqwest::Method::GET, &format!("/{name}"), None) {
            Ok(v) => Ok(Some(DbInfo::from_json(&v)?)),
            Err(f) if f.status == Some(404) => Ok(None),
            Err(f) => Err(self.explain(
                f,
                &format!("looking up database {name} in organization {}", self.t.organization),
            )),
        }
    }

    /// Create the branch `name` seeded from the source at `timestamp`.
    fn create_branch(&self, name: &str, timestamp: &str) -> Result<DbInfo> {
        let body = json!({
            "name": name,
            "group": self.t.group,
            "seed": {"type": "database", "name": self.t.database, "timestamp": timestamp},
        });
        match self.api(reqwest::Method::POST, "", Some(body)) {
            Ok(v) => DbInfo::from_json(&v),
            Err(f) if f.status == Some(409) => Err(anyhow!(
                "creating branch database {name}: the name is taken (HTTP 409: {}). guard names its branches after the snapshot id, so this is a leftover of an earlier guard or a clash; nothing was run. If {name} is guard's leftover, delete it (`turso db destroy {name}`) and run again",
                f.message
            )),
            Err(f) => Err(self.explain(f, &format!("creating branch database {name} of {} at {timestamp}", self.t.database))),
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
    fn token_for(&self, name: &str) -> Result<String> {
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

    fn source_db(&self) -> Result<Db> {
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

    fn branch_db(&self, info: &DbInfo) -> Result<Db> {
        Ok(Db {
            http: self.http.clone(),
            url: self.hrana_url(&info.hostname),
            token: self.token_for(&info.name)?,
            label: format!("branch database {}", info.name),
        })
    }

    /// The recorded branch of a snapshot, `None` when it no longer exists.
    fn find_recorded_branch(&self, rec: &TargetRecord) -> Result<Option<DbInfo>> {
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
    fn recorded_branch(&self, rec: &TargetRecord) -> Result<DbInfo> {
        self.find_recorded_branch(rec)?.ok_or_else(|| {
            anyhow!(
                "branch database {} of this snapshot no longer exists in organization {} (deleted outside guard?)",
                rec.meta.get("branch").map(String::as_str).unwrap_or("?"),
                self.t.organization
            )
        })
    }

    /// Fingerprints read in one read transaction.
    fn read_fingerprints(&self, db: &Db, hashed: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let mut s = db.stream();
        s.execute("BEGIN", &[])?;
        let r = fingerprints(&mut s, hashed);
        let _ = s.execute("ROLLBACK", &[]);
        s.close();
        r.with_context(|| format!("fingerprints of {}", db.label))
    }

    fn snapshot_inner(&self, ctx: &SnapshotCtx, rec: &mut TargetRecord, info: &DbInfo, src: &DbInfo) -> Result<()> {
        let branch = self.branch_db(info)?;
        branch.answer(BRANCH_READY)?;
        {
            let mut s = branch.stream();
            let v = s.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'",
                &[],
            )?;
            if self.t.restore == TursoRestore::Reload && v.first().and_then(Val::as_int).unwrap_or(0) > 0 {
                bail!("{} has virtual tables (FTS, vector indexes…), which restore = \"reload\" cannot recreate row by row; use restore = \"promote\" for this database", self.t.database);
            }
        }
        rec.fingerprints = self.read_fingerprints(&branch, ctx.fingerprint)?;

        // The branch is the state a restore brings back. Turso's point in time may lag its
        // timestamp by up to 15 s: say so when the source already differs from it.
        let source = self.source_db()?;
        let now = self.read_fingerprints(&source, ctx.fingerprint)?;
        if let Err(diff) = compare_fingerprints(&rec.fingerprints, &now) {
            let msg = crate::secrets::redact(&format!("{diff:#}"));
            eprintln!(
                "guard: warning: target {}: branch {} differs from {} as it is now ({msg}). Writes of the last seconds may be missing from the branch (Turso's point in time can lag up to 15 s), or something is writing; a restore brings back the branch's state",
                self.spec.name, info.name, src.name
            );
            rec.meta.insert("branch_differs_from_source".into(), msg);
        }

        if self.t.export {
            let key = ctx.key(&self.spec.name, "sql.gz");
            let mut reader = DumpReader::new(branch.dump()?);
            let artifact = ctx
                .write_artifact(key.clone(), "sql", &mut reader)
                .with_context(|| format!("exporting {} through /dump", branch.label))?;
            if let Err(e) = check_dump(reader.total, &reader.head, &reader.tail) {
                let _ = ctx.store.remove(&key);
                return Err(e).with_context(|| format!("exporting {} through /dump", branch.label));
            }
            rec.artifacts.push(artifact);
        }
        Ok(())
    }

    /// Replace every table, index, trigger and view of the source with the branch's, in one
    /// transaction on one Hrana stream.
    fn reload(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        if let Some(info) = self.find_recorded_branch(rec)? {
            let branch = self.branch_db(&info)?;
            let mut b = branch.stream();
            b.execute("BEGIN", &[])?;
            let r = self.reload_from(&mut b, &format!("branch {}", info.name));
            let _ = b.execute("ROLLBACK", &[]);
            b.close();
            return r;
        }
        // The branch is gone (deleted outside guard): the export is the other way back.
        let name = rec.meta.get("branch").cloned().unwrap_or_default();
        let Some(a) = rec.artifacts.iter().find(|a| a.format == "sql") else {
            bail!("branch database {name} of this snapshot no longer exists and the snapshot has no export (export = false): there is nothing to reload from");
        };
        eprintln!(
            "guard: branch database {name} no longer exists; reloading {} from the export {}/{}",
            self.t.database,
            store.location(),
            a.key
        );
        let scratch = crate::store::state::scratch_dir(store)?;
        let mut c = load_export(store, a, &scratch.path().join("export.db"))?;
        c.execute_batch("BEGIN")?;
        self.reload_from(&mut c, &format!("the export {}", a.key))
    }

    /// The reload itself, reading the snapshot's state from `b` (the branch, or the export
    /// loaded into a local SQLite file).
    fn reload_from(&self, b: &mut dyn Sql, from: &str) -> Result<()> {
        let source = self.source_db()?;
        let objects = b.rows("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid", &[])?;
        let objects: Vec<(String, String, String)> = objects
            .rows
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap_or_default().to_string(),
                    r[1].as_str().unwrap_or_default().to_string(),
                    r[2].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if objects
            .iter()
            .any(|(t, _, sql)| t == "table" && sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL TABLE"))
        {
            bail!("{from} has virtual tables, which reload cannot recreate; use restore = \"promote\"");
        }
        let sequence = b
            .rows("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'", &[])?
            .first()
            .and_then(Val::as_int)
            .unwrap_or(0)
            > 0;

        let mut s = source.stream();
        // Foreign keys are checked per connection and cannot change inside a transaction.
        s.execute("PRAGMA foreign_keys=OFF", &[])?;
        s.execute("BEGIN IMMEDIATE", &[])?;
        let result = (|| -> Result<()> {
            let existing = s.execute("SELECT type, name FROM sqlite_master WHERE type IN ('view','trigger','table') AND name NOT LIKE 'sqlite_%'", &[])?;
            let mut drops = Vec::new();
            for kind in ["view", "trigger", "table"] {
                for r in existing.rows.iter().filter(|r| r[0].as_str() == Some(kind)) {
                    let name = r[1].as_str().unwrap_or_default();
                    drops.push((
                        format!("DROP {} IF EXISTS {}", kind.to_ascii_uppercase(), quote_ident(name)),
                        Vec::new(),
                    ));
                }
            }
            s.batch(&drops)?;
            let creates: Vec<(String, Vec<Val>)> = objects
                .iter()
                .filter(|(t, _, _)| t == "table")
                .map(|(_, _, sql)| (sql.clone(), Vec::new()))
                .collect();
            s.batch(&creates)?;
            for (_, table, _) in objects.iter().filter(|(t, _, _)| t == "table") {
                self.copy_rows(b, &mut s, table)
                    .with_context(|| format!("copying table {table}"))?;
            }
            if sequence {
                let rows = b.rows("SELECT name, seq FROM sqlite_sequence", &[])?;
                let mut stmts = vec![("DELETE FROM sqlite_sequence".to_string(), Vec::new())];
                for r in rows.rows {
                    stmts.push(("INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)".into(), r));
                }
                s.batch(&stmts)?;
            }
            let rest: Vec<(String, Vec<Val>)> = objects
                .iter()
                .filter(|(t, _, _)| t != "table")
                .map(|(_, _, sql)| (sql.clone(), Vec::new()))
                .collect();
            s.batch(&rest)?;
            s.execute("COMMIT", &[])?;
            Ok(())
        })();
        if let Err(e) = result {
            let rolled_back = s.execute("ROLLBACK", &[]).is_ok();
            s.close();
            return Err(e.context(if rolled_back {
                format!("reloading {} from {}: rolled back, the source is unchanged", self.t.database, from)
            } else {
                format!("reloading {} from {}: the transaction was abandoned (its stream closes and the server rolls it back)", self.t.database, from)
            }));
        }
        s.close();
        Ok(())
    }

    /// Copy one table's rows from the branch stream to the source stream, typed values intact.
    fn copy_rows(&self, b: &mut dyn Sql, s: &mut Stream, table: &str) -> Result<()> {
        let cols = columns(b, table)?;
        // Generated columns (hidden 2 and 3) are computed, not inserted.
        let insertable: Vec<&Column> = cols.iter().filter(|c| c.hidden == 0).collect();
        if insertable.is_empty() {
            return Ok(());
        }
        let paging = paging(b, table, true, &cols)?;
        // Keep rowids of rowid tables, unless a column is the rowid (INTEGER PRIMARY KEY).
        let ipk = cols.iter().filter(|c| c.pk > 0).count() == 1
            && cols.iter().any(|c| c.pk == 1 && c.decl.eq_ignore_ascii_case("INTEGER"));
        let keep_rowid = matches!(paging, Paging::Rowid(_)) && !ipk;
        let select = insertable
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let mut names: Vec<String> = insertable.iter().map(|c| quote_ident(&c.name)).collect();
        if let (true, Paging::Rowid(alias)) = (keep_rowid, &paging) {
            names.insert(0, alias.clone());
        }
        let placeholders = (1..=names.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            quote_ident(table),
            names.join(", ")
        );
        let skip = usize::from(matches!(paging, Paging::Rowid(_)) && !keep_rowid);
        for_each_page(b, table, &select, &paging, |rows| {
            let stmts: Vec<(String, Vec<Val>)> = rows.iter().map(|r| (insert.clone(), r[skip..].to_vec())).collect();
            s.batch(&stmts)
        })
    }

    fn promote_instructions(&self, rec: &TargetRecord) -> Result<String> {
        let info = self.recorded_branch(rec)?;
        let was = match &self.t.db_url {
            Some(u) => u.clone(),
            None => match self.find_database(&self.t.database) {
                Ok(Some(d)) => format!("libsql://{}", d.hostname),
                _ => format!("the URL of {}", self.t.database),
            },
        };
        let when = rec
            .meta
            .get("seed_timestamp")
            .cloned()
            .unwrap_or_else(|| "the snapshot".into());
        Ok(format!(
            "restore = \"promote\": guard did not change {db}; the pre-run state is branch database {b}. Restore is not automatic — repoint the application:\n  \
             1. database URL: libsql://{host}   (instead of {was})\n  \
             2. mint a token for it (tokens of {db} do not work on it): turso db tokens create {b}\n  \
             3. put both where the application reads them (for example TURSO_DATABASE_URL and TURSO_AUTH_TOKEN) and restart it\n  \
             4. in this policy set database = \"{b}\" (and db_url/db_token if you set them)\n  \
             5. once the application works, retire the failed database: turso db destroy {db} (its state is in the rescue snapshot's branch)\n  \
             The branch holds {db} as of {when}; writes made since then are only in {db} and its rescue branch.",
            db = self.t.database,
            b = info.name,
            host = info.hostname,
        ))
    }
}

fn seed_timestamp() -> String {
    let now = crate::clock::now();
    crate::clock::rfc3339(now.replace_nanosecond(0).unwrap_or(now))
}

impl Target for TursoTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn source(&self) -> String {
        format!("turso:{}/{}", self.t.organization, self.t.database)
    }

    fn preflight(&self) -> Result<()> {
        let info = self.get_database(&self.t.database)?;
        if is_guard_branch(&info.name) {
            bail!("{} is a guard branch, not an application database", info.name);
        }
        let db = self.source_db()?;
        db.answer(Duration::from_secs(10))?;
        Ok(())
    }

    fn snapshot(&self, ctx: &SnapshotCtx) -> Result<TargetRecord> {
        let mut rec = TargetRecord {
            name: self.spec.name.clone(),
            kind: "turso".into(),
            source: self.source(),
            ..Default::default()
        };
        rec.tools.insert("hrana".into(), "2".into());
        rec.tools.insert("platform-api".into(), "v1".into());
        let Some(src) = self.find_database(&self.t.database)? else {
            if ctx.allow_absent {
                rec.absent = true;
                return Ok(rec);
            }
            bail!(
                "database {} does not exist in organization {}",
                self.t.database,
                self.t.organization
            );
        };
        let name = branch_name(&self.t.database, ctx.snapshot_id);
        let timestamp = seed_timestamp();
        let info = self.create_branch(&name, &timestamp)?;
        if info.name != name {
            bail!("the Platform API created {} when asked for {name}", info.name);
        }
        for (k, v) in [
            ("organization", self.t.organization.clone()),
            ("database", self.t.database.clone()),
            ("source_db_id", src.id.clone()),
            ("group", self.t.group.clone()),
            ("branch", info.name.clone()),
            ("branch_db_id", info.id.clone()),
            ("branch_hostname", info.hostname.clone()),
            ("seed_timestamp", timestamp.clone()),
            (
                "restore",
                if self.t.restore == TursoRestore::Reload {
                    "reload".into()
                } else {
                    "promote".into()
                },
            ),
        ] {
            rec.meta.insert(k.into(), v);
        }
        if let Err(e) = self.snapshot_inner(ctx, &mut rec, &info, &src) {
            // No half-made snapshot: the branch goes with it.
            if let Err(d) = self.delete_branch(&info.name) {
                return Err(e.context(format!("and the branch {} could not be deleted: {d:#}", info.name)));
            }
            return Err(e);
        }
        Ok(rec)
    }

    fn deep_verify(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<()> {
        if rec.absent {
            return Ok(());
        }
        let info = self.recorded_branch(rec)?;
        let branch = self.branch_db(&info)?;
        branch.answer(Duration::from_secs(10))?;
        let got = self.read_fingerprints(&branch, &rec.hashed_items())?;
        compare_fingerprints(&rec.fingerprints, &got).with_context(|| {
            format!(
                "branch {} differs from the fingerprints recorded at snapshot time",
                info.name
            )
        })?;
        if let Some(a) = rec.artifacts.iter().find(|a| a.format == "sql") {
            let path = scratch.join(format!("{}.export.db", rec.name));
            let r = check_export(rec, store, a, &path);
            let _ = std::fs::remove_file(&path);
            r?;
        }
        Ok(())
    }

    /// Drill: the branch answers with the recorded fingerprints, and the export is restored
    /// into a scratch SQLite file, checked, and offered to the drill's checks.
    fn drill(&self, rec: &TargetRecord, store: &dyn Store, scratch: &Path) -> Result<Option<Box<dyn Target>>> {
        self.deep_verify(rec, store, scratch)?;
        let Some(a) = rec.artifacts.iter().find(|a| a.format == "sql") else {
            return Ok(None);
        };
        let path = scratch.join(format!("{}.drill.db", rec.name));
        check_export(rec, store, a, &path)?;
        let spec = TargetSpec {
            name: rec.name.clone(),
            line: 0,
            kind: TargetKind::Sqlite { path: path.clone() },
        };
        Ok(Some(Box::new(super::sqlite::SqliteTarget::new(spec, path))))
    }

    fn restore(&self, rec: &TargetRecord, store: &dyn Store) -> Result<()> {
        if rec.absent {
            bail!("the snapshot recorded no database {}; guard never deletes a Turso database — remove it yourself if that is what you want", self.t.database);
        }
        match self.t.restore {
            TursoRestore::Reload => self.reload(rec, store),
            TursoRestore::Promote => {
                // Not a success: the source still holds the failed state until someone repoints.
                Err(super::ManualStep(self.promote_instructions(rec)?).into())
            }
        }
    }

    fn verify_restored(&self, rec: &TargetRecord) -> Result<()> {
        if rec.absent {
            return match self.find_database(&self.t.database)? {
                Some(_) => bail!("database {} exists but the snapshot recorded none", self.t.database),
                None => Ok(()),
            };
        }
        let source = self.source_db()?;
        let got = self.read_fingerprints(&source, &rec.hashed_items())?;
        compare_fingerprints(&rec.fingerprints, &got)?;
        // Beyond the recorded hashes: every table's content equals the branch's (when the
        // branch is gone the restore came from the export, checked against the record above).
        let Some(info) = self.find_recorded_branch(rec)? else {
            return Ok(());
        };
        let branch = self.branch_db(&info)?;
        let tables: Vec<String> = rec
            .fingerprints
            .keys()
            .filter(|k| !k.starts_with('@'))
            .cloned()
            .collect();
        let want = self.read_fingerprints(&branch, &tables)?;
        let got = self.read_fingerprints(&source, &tables)?;
        compare_fingerprints(&want, &got)
            .with_context(|| format!("{} differs from branch {}", self.t.database, info.name))
    }

    fn fingerprint(&self, items: &[String]) -> Result<BTreeMap<String, Fingerprint>> {
        let db = self.source_db()?;
        let mut s = db.stream();
        s.execute("BEGIN", &[])?;
        let mut out = BTreeMap::new();
        let r = items.iter().try_for_each(|t| {
            out.insert(t.clone(), table_fingerprint(&mut s, t)?);
            Ok::<_, anyhow::Error>(())
        });
        let _ = s.execute("ROLLBACK", &[]);
        s.close();
        r?;
        Ok(out)
    }

    /// Retention: a pruned snapshot's branch database is deleted (only ever a guard branch of
    /// this target's database; see [`TursoTarget::delete_branch`]).
    fn release(&self, rec: &TargetRecord, _kept: &[TargetRecord], _store: &dyn Store) -> Result<()> {
        match rec.meta.get("branch") {
            Some(name) if !rec.absent => self.delete_branch(name).map(|_| ()),
            _ => Ok(()),
        }
    }

    fn query(&self, sql: &str) -> Result<String> {
        let db = self.source_db()?;
        let mut s = db.stream();
        let r = s.execute(sql, &[]);
        s.close();
        Ok(r?.first().map(Val::to_text).unwrap_or_else(|| "NULL".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_guards_and_traceable() {
        let id = "20261123T164800.123Z-a3f2";
        let n = branch_name("liveone-tokyo", id);
        assert_eq!(n, "guard-liveone-tokyo-20261123t164800123z-a3f2");
        assert!(is_guard_branch(&n));
        assert_eq!(snapshot_id_of_branch(&n).as_deref(), Some(id));
        assert!(is_branch_of(&n, "liveone-tokyo"));
        assert!(!is_branch_of(&n, "liveone"));
        let long = branch_name(&"x".repeat(80), id);
        assert!(long.len() <= 64 && is_guard_branch(&long), "{long}");
        assert!(is_branch_of(&long, &"x".repeat(80)));
        for not in [
            "liveone-tokyo",
            "guard-liveone-tokyo",
            "guard-x-20261123t164800123z-a3g2",
            "guard--20261123t164800123z-a3f2",
            "Guard-x-20261123t164800123z-a3f2",
        ] {
            assert!(!is_guard_branch(not) || !is_branch_of(not, "x"), "{not}");
        }
        assert!(!is_guard_branch("liveone-tokyo-20261123t164800123z-a3f2"));
    }

    #[test]
    fn values_round_trip_hrana_json() {
        for v in [
            Val::Null,
            Val::Int(i64::MIN),
            Val::Int(42),
            Val::Float(0.1 + 0.2),
            Val::Text("é\"x".into()),
            Val::Blob(vec![0, 255, 7]),
        ] {
            let j = serde_json::to_string(&v.to_json()).unwrap();
            assert_eq!(Val::from_json(&serde_json::from_str(&j).unwrap()).unwrap(), v, "{j}");
        }
        assert_eq!(Val::Blob(vec![0, 255]).to_json()["base64"], "AP8");
        assert_eq!(
            Val::from_json(&json!({"type": "blob", "base64": "AP8="})).unwrap(),
            Val::Blob(vec![0, 255])
        );
        assert_eq!(
            Val::from_json(&json!({"type": "integer", "value": "-7"})).unwrap(),
            Val::Int(-7)
        );
        assert!(Val::from_json(&json!({"type": "integer", "value": "x"})).is_err());
    }

    #[test]
    fn fingerprints_equal_those_of_sqlite_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v REAL, s TEXT, b BLOB);
             CREATE TABLE w (k TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
             CREATE TABLE plain (x, y);
             CREATE VIEW vt AS SELECT id, s FROM t;",
        )
        .unwrap();
        for i in 0..1234 {
            c.execute(
                "INSERT INTO t (v, s, b) VALUES (?1, ?2, ?3)",
                (i as f64 / 7.0, format!("s{i}"), vec![i as u8; 3]),
            )
            .unwrap();
            c.execute("INSERT INTO w VALUES (?1, ?2)", (format!("k{i}"), i))
                .unwrap();
            c.execute("INSERT INTO plain VALUES (?1, NULL)", [i]).unwrap();
        }
        let items: Vec<String> = ["t", "w", "plain", "vt"].iter().map(|s| s.to_string()).collect();
        let spec = TargetSpec {
            name: "app".into(),
            line: 0,
            kind: TargetKind::Sqlite { path: path.clone() },
        };
        let sqlite = crate::targets::sqlite::SqliteTarget::new(spec, path.clone());
        let want = sqlite.fingerprint(&items).unwrap();
        for i in &items {
            assert_eq!(table_fingerprint(&mut c, i).unwrap(), want[i], "{i}");
        }
        assert_eq!(want["t"].rows, 1234);
        let all = fingerprints(&mut c, &items[..1]).unwrap();
        assert_eq!(all["w"].rows, 1234);
        assert!(all["w"].hash.is_none() && all["t"].hash.is_some() && all.contains_key("@schema"));
    }

    #[test]
    fn dumps_must_be_whole() {
        assert!(check_dump(0, b"", b"").is_err());
        assert!(check_dump(10, b"PRAGMA foreign_keys=OFF;\nBEGIN", b"INSERT INTO t VALUES(1);\n").is_err());
        assert!(check_dump(
            10,
            b"PRAGMA foreign_keys=OFF;\nBEGIN",
            b"INSERT INTO t VALUES(1);\nCOMMIT;\n"
        )
        .is_ok());
        assert!(check_dump(10, b"<html>", b"COMMIT;").is_err());
    }
}
