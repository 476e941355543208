//! The SQLite dialect shared by SQLite and Turso targets: typed values ([`Val`]), result rows,
//! and the [`Sql`] trait that lets one [`fingerprint`] algorithm run over a local SQLite file
//! (rusqlite) or a Hrana stream over HTTP (Turso).
//!
//! Equal data gives equal fingerprints whichever kind read it: there is one copy of the
//! algorithm, in [`fingerprint`], and each [`Sql`] only supplies rows.

pub mod fingerprint;
pub mod page;

use anyhow::{anyhow, Result};
use base64::Engine as _;
use serde_json::{json, Value as Json};
use sha2::{Digest as _, Sha256};

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
            // sqld writes a non-finite float as `"value": null` (serde_json; libsql-hrana
            // proto.rs `Float { value: f64 }`). SQLite stores no NaN, so it is +Inf or -Inf; the
            // sign is not on the wire: NaN marks it until the reader asks (page.rs
            // `resolve_infinities`).
            "float" => match v.get("value") {
                Some(Json::Null) => Val::Float(f64::NAN),
                x => Val::Float(x.and_then(Json::as_f64).ok_or_else(bad)?),
            },
            "text" => Val::Text(v.get("value").and_then(Json::as_str).ok_or_else(bad)?.to_string()),
            "blob" => Val::Blob(
                b64()
                    .decode(v.get("base64").and_then(Json::as_str).ok_or_else(bad)?)
                    .map_err(|_| bad())?,
            ),
            _ => return Err(bad()),
        })
    }

    /// The size sqld counts for this value in a response (libsql-server
    /// hrana/result_builder.rs `value_json_size`: its JSON, blobs by their raw length).
    pub fn response_size(&self) -> u64 {
        (match self {
            Val::Null => 15,
            Val::Int(i) => 29 + i.to_string().len(),
            Val::Float(f) => 26 + f.to_string().len(),
            Val::Text(t) => 26 + t.len(),
            Val::Blob(b) => b.len(),
        }) as u64
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

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A value borrowed from a row, as fingerprints hash it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValRef<'a> {
    Null,
    Int(i64),
    Float(f64),
    /// Text as its bytes.
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl Val {
    /// This value, borrowed.
    pub fn as_ref(&self) -> ValRef<'_> {
        match self {
            Val::Null => ValRef::Null,
            Val::Int(i) => ValRef::Int(*i),
            Val::Float(f) => ValRef::Float(*f),
            Val::Text(t) => ValRef::Text(t.as_bytes()),
            Val::Blob(b) => ValRef::Blob(b),
        }
    }
}

/// One row's digest, summed into a table's content hash: per value a tag byte, then the
/// little-endian value or the length-prefixed bytes; the first 128 bits of SHA-256 over them.
pub fn row_digest(vals: &[ValRef<'_>]) -> u128 {
    let mut h = Sha256::new();
    for v in vals {
        match *v {
            ValRef::Null => h.update([0u8]),
            ValRef::Int(i) => {
                h.update([1u8]);
                h.update(i.to_le_bytes());
            }
            ValRef::Float(f) => {
                h.update([2u8]);
                h.update(f.to_bits().to_le_bytes());
            }
            ValRef::Text(t) => {
                h.update([3u8]);
                h.update((t.len() as u64).to_le_bytes());
                h.update(t);
            }
            ValRef::Blob(b) => {
                h.update([4u8]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
        }
    }
    let d = h.finalize();
    u128::from_le_bytes(d[..16].try_into().expect("16 bytes"))
}

/// Double-quote an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The server refused to answer because the response would exceed its size limit
/// (`RESPONSE_TOO_LARGE`); readers page smaller and try again.
#[derive(Debug)]
pub struct ResponseTooLarge(pub String);

impl std::fmt::Display for ResponseTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResponseTooLarge {}

/// Rows of a statement.
#[derive(Debug, Default)]
pub struct Rows {
    pub cols: Vec<String>,
    pub rows: Vec<Vec<Val>>,
}

impl Rows {
    pub fn first(&self) -> Option<&Val> {
        self.rows.first().and_then(|r| r.first())
    }
}

/// Anything that runs SQLite-dialect statements: a Hrana stream (Turso), or a local SQLite file
/// (a SQLite target, a Turso export).
pub trait Sql: AsDynSql {
    /// Run a statement and return its rows.
    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Rows>;
    /// Call `f` with every row of `SELECT * FROM table` (a table when `is_table`, else a view),
    /// in no particular order.
    fn each_row(&mut self, table: &str, is_table: bool, f: &mut dyn FnMut(&[ValRef<'_>])) -> Result<()>;
    /// Call `f` with every row of `SELECT columns FROM table`, in no particular order (an
    /// `untouched` check over the columns a table had before the command).
    fn each_row_of(
        &mut self,
        table: &str,
        columns: &[String],
        is_table: bool,
        f: &mut dyn FnMut(&[ValRef<'_>]),
    ) -> Result<()> {
        page::each_row_paged_of(self.as_dyn_sql(), table, columns, is_table, f)
    }
}

/// `&mut dyn Sql` from any [`Sql`] (for the trait's default methods).
pub trait AsDynSql {
    fn as_dyn_sql(&mut self) -> &mut dyn Sql;
}

impl<T: Sql> AsDynSql for T {
    fn as_dyn_sql(&mut self) -> &mut dyn Sql {
        self
    }
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

    /// One statement over the whole table, values hashed as SQLite returns them (text as its
    /// bytes, valid UTF-8 or not).
    fn each_row(&mut self, table: &str, _is_table: bool, f: &mut dyn FnMut(&[ValRef<'_>])) -> Result<()> {
        each_row_of_local(self, table, "*", f)
    }

    fn each_row_of(
        &mut self,
        table: &str,
        columns: &[String],
        _is_table: bool,
        f: &mut dyn FnMut(&[ValRef<'_>]),
    ) -> Result<()> {
        let select = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        each_row_of_local(self, table, &select, f)
    }
}

/// `SELECT select FROM table` over a local file in one statement.
fn each_row_of_local(
    c: &rusqlite::Connection,
    table: &str,
    select: &str,
    f: &mut dyn FnMut(&[ValRef<'_>]),
) -> Result<()> {
    use rusqlite::types::ValueRef;
    let mut st = c.prepare(&format!("SELECT {select} FROM {}", quote_ident(table)))?;
    let ncol = st.column_count();
    let mut rows = st.query([])?;
    while let Some(row) = rows.next()? {
        let mut vals = Vec::with_capacity(ncol);
        for i in 0..ncol {
            vals.push(match row.get_ref(i)? {
                ValueRef::Null => ValRef::Null,
                ValueRef::Integer(v) => ValRef::Int(v),
                ValueRef::Real(v) => ValRef::Float(v),
                ValueRef::Text(t) => ValRef::Text(t),
                ValueRef::Blob(b) => ValRef::Blob(b),
            });
        }
        f(&vals);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_float_is_an_infinity_of_unknown_sign() {
        // sqld (serde_json) writes ±Infinity as null; SQLite stores no NaN.
        assert!(
            matches!(Val::from_json(&json!({"type": "float", "value": null})).unwrap(), Val::Float(f) if f.is_nan())
        );
        assert!(Val::from_json(&json!({"type": "float", "value": "x"})).is_err());
        assert!(Val::from_json(&json!({"type": "float"})).is_err());
        // Sizes as sqld counts them (hrana/result_builder.rs value_json_size).
        assert_eq!(Val::Null.response_size(), r#"{"type":"null"}"#.len() as u64);
        assert_eq!(
            Val::Int(42).response_size(),
            r#"{"type":"integer","value":"42"}"#.len() as u64
        );
        assert_eq!(
            Val::Text("abc".into()).response_size(),
            r#"{"type":"text","value":"abc"}"#.len() as u64
        );
        assert_eq!(Val::Blob(vec![0; 1000]).response_size(), 1000);
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
}
