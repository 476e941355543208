//! Fingerprints of a live database: row counts and content hashes of tables, and the schema.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::PgConnection;

use super::conn::{qualified, quote_ident};
use super::database::DbState;
use crate::manifest::{Column, Fingerprint};

/// Schema fingerprint parts: (key suffix, query returning one text line per object).
pub(super) const SCHEMA_PARTS: [(&str, &str); 7] = [
    (
        "schemas",
        "SELECT n.nspname || ' owner ' || n.nspowner::regrole::text FROM pg_namespace n
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "tables",
        "SELECT n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' owner ' || c.relowner::regrole::text
           || coalesce(' ' || md5(CASE WHEN c.relkind IN ('v','m') THEN pg_get_viewdef(c.oid) END), '')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r','p','v','m','f','S') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "columns",
        "SELECT n.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
           || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f')
           AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "indexes",
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "constraints",
        "SELECT n.nspname || '.' || coalesce(r.relname, t.typname, '') || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
         FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
         LEFT JOIN pg_class r ON r.oid = con.conrelid LEFT JOIN pg_type t ON t.oid = con.contypid
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "triggers",
        "SELECT pg_get_triggerdef(t.oid) || CASE t.tgenabled WHEN 'D' THEN ' disabled' ELSE '' END
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
    ),
    (
        "functions",
        "SELECT p.oid::regprocedure::text || ' ' || p.prokind::text || ' returns ' || format_type(p.prorettype, NULL) || ' ' || md5(coalesce(p.prosrc, ''))
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')",
    ),
];

pub(super) fn hash_lines(lines: &[String]) -> Fingerprint {
    let mut h = Sha256::new();
    for l in lines {
        h.update((l.len() as u64).to_le_bytes());
        h.update(l.as_bytes());
    }
    Fingerprint {
        rows: lines.len() as u64,
        hash: Some(hex::encode(&h.finalize()[..16])),
        columns: None,
        absent: false,
    }
}

/// `@schema` (everything) and `@schema.PART` fingerprints.
pub(super) async fn schema_fingerprints(c: &mut PgConnection) -> Result<BTreeMap<String, Fingerprint>> {
    let mut out = BTreeMap::new();
    let mut all = Vec::new();
    for (part, q) in SCHEMA_PARTS {
        let mut lines: Vec<String> = sqlx::query_scalar::<_, Option<String>>(q)
            .fetch_all(&mut *c)
            .await
            .with_context(|| format!("schema fingerprint ({part})"))?
            .into_iter()
            .map(|l| l.unwrap_or_default())
            .collect();
        lines.sort();
        out.insert(format!("@schema.{part}"), hash_lines(&lines));
        all.extend(lines.into_iter().map(|l| format!("{part}: {l}")));
    }
    out.insert("@schema".into(), hash_lines(&all));
    Ok(out)
}

/// Row count and order-independent content hash of one table: the sum (not xor, so duplicate
/// rows do not cancel) of a 64-bit hash of each row's text form, with the columns it covers.
pub(super) async fn table_fingerprint(c: &mut PgConnection, table: &str) -> Result<Fingerprint> {
    let q = qualified(table);
    let columns = table_columns(c, table, &q).await?;
    digest(c, table, &q, "t", columns).await
}

/// Row count and hash of `row` (an expression over the table as `t`) over every row of `q`,
/// recorded with `columns`.
async fn digest(c: &mut PgConnection, table: &str, q: &str, row: &str, columns: Vec<Column>) -> Result<Fingerprint> {
    let (rows, hash): (i64, String) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(hashtextextended({row}::text, 0)), 0)::text FROM {q} t"
    ))
    .fetch_one(&mut *c)
    .await
    .with_context(|| format!("fingerprint of {table}"))?;
    Ok(Fingerprint {
        rows: rows as u64,
        hash: Some(hash),
        columns: Some(columns),
        absent: false,
    })
}

/// The table's columns in order, with their types (`format_type`); an error when there is no
/// such table.
async fn table_columns(c: &mut PgConnection, table: &str, q: &str) -> Result<Vec<Column>> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(q)
        .fetch_one(&mut *c)
        .await?;
    if exists.is_none() {
        bail!("table {table:?} does not exist");
    }
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(q)
    .fetch_all(&mut *c)
    .await
    .with_context(|| format!("columns of {table}"))?;
    Ok(cols.into_iter().map(|(name, ty)| Column { name, ty }).collect())
}

/// "Existing data untouched": row count and content hash of `table` over the columns it had
/// when `before` was recorded, hashed as [`table_fingerprint`] hashes whole rows (a row of just
/// those columns has the same text form). Columns added since are left out; a recorded column
/// dropped or retyped is an error naming it.
pub(super) async fn existing_fingerprint(c: &mut PgConnection, table: &str, before: &[Column]) -> Result<Fingerprint> {
    let q = qualified(table);
    let now = table_columns(c, table, &q).await?;
    crate::targets::sql::fingerprint::check_columns(table, before, &now)?;
    if now == before {
        return digest(c, table, &q, "t", now).await;
    }
    let row = before
        .iter()
        .map(|col| format!("t.{}", quote_ident(&col.name)))
        .collect::<Vec<_>>()
        .join(", ");
    digest(c, table, &q, &format!("ROW({row})"), now).await
}

/// Row counts of every user table, hashes of `hashed`, and the schema fingerprints. With
/// `lenient` (rescue snapshots of a failed state), a hashed table that no longer exists is
/// recorded absent instead of failing.
pub(super) async fn fingerprints(
    c: &mut PgConnection,
    hashed: &[String],
    lenient: bool,
) -> Result<BTreeMap<String, Fingerprint>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r','p') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
           AND NOT c.relispartition ORDER BY 1, 2",
    )
    .fetch_all(&mut *c)
    .await?;
    let mut out = BTreeMap::new();
    for (schema, table) in tables {
        let key = if schema == "public" {
            table.clone()
        } else {
            format!("{schema}.{table}")
        };
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        ))
        .fetch_one(&mut *c)
        .await?;
        out.insert(
            key,
            Fingerprint {
                rows: n as u64,
                hash: None,
                columns: None,
                absent: false,
            },
        );
    }
    for t in hashed {
        if t.starts_with('@') {
            continue;
        }
        match table_fingerprint(c, t).await {
            Ok(f) => {
                out.insert(t.clone(), f);
            }
            Err(_) if lenient => {
                out.insert(t.clone(), Fingerprint::absent());
            }
            Err(e) => return Err(e),
        }
    }
    out.extend(schema_fingerprints(c).await?);
    out.insert("@database".into(), database_fingerprint(c).await?);
    Ok(out)
}

/// `@database`: the database's owner, comment, connection limit, ACL and settings (its own
/// and its roles'), which a dump of the database does not hold ([`DbState`]).
pub(super) async fn database_fingerprint(c: &mut PgConnection) -> Result<Fingerprint> {
    Ok(hash_lines(&DbState::capture(c).await?.lines()))
}
