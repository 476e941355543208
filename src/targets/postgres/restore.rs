//! Restore helpers: the database recreated as recorded, other sessions handled as the policy
//! says, and the preamble that empties the database inside the restore's transaction.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sqlx::{Connection as _, Row as _};

use super::conn::{quote_ident, quote_literal};
use super::PostgresTarget;
use super::Sessions;
use crate::manifest::TargetRecord;

/// `CREATE DATABASE name` with the encoding and collation the snapshot recorded (and its owner,
/// with `owner`), from `template0` so the restore starts empty.
pub(super) fn create_database_sql(name: &str, rec: &TargetRecord, owner: bool) -> String {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(o) = rec.meta.get("db_owner").filter(|_| owner) {
        sql.push_str(&format!(" OWNER {}", quote_ident(o)));
    }
    for (key, clause) in [
        ("db_encoding", "ENCODING"),
        ("db_collate", "LC_COLLATE"),
        ("db_ctype", "LC_CTYPE"),
    ] {
        if let Some(v) = rec.meta.get(key) {
            sql.push_str(&format!(" {clause} {}", quote_literal(v)));
        }
    }
    sql
}

impl PostgresTarget {
    /// Recreate the target's database when it is gone, as recorded at snapshot time (owner,
    /// encoding, collation), so the dump has somewhere to go.
    pub(super) fn ensure_database(&self, rec: &TargetRecord, db: &str) -> Result<()> {
        if let Ok(c) = crate::runtime::block_on(self.connect_to(Some(db))) {
            crate::runtime::block_on(async {
                let _ = c.close().await;
            });
            return Ok(());
        }
        let mut c = crate::runtime::block_on(self.connect_to(Some("postgres")))
            .or_else(|_| crate::runtime::block_on(self.connect_to(Some("template1"))))?;
        let r: Result<()> = crate::runtime::block_on(async {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(db)
                .fetch_optional(&mut c)
                .await?;
            if exists.is_some() {
                return Ok(());
            }
            let sql = create_database_sql(db, rec, true);
            sqlx::query(&sql).execute(&mut c).await?;
            eprintln!(
                "guard: target {}: database {db} did not exist; created it to restore into",
                self.spec.name
            );
            Ok(())
        });
        crate::runtime::block_on(async {
            let _ = c.close().await;
        });
        r.with_context(|| format!("target {}: cannot recreate database {db}", self.spec.name))
    }

    /// Sessions on the database other than guard's own; waits briefly for ones that are
    /// closing (guard's own check connections, a finished migration).
    pub(super) fn other_sessions(&self, db: &str) -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut c = self.connect_server()?;
            let rows = crate::runtime::block_on(async {
                let r = sqlx::query(
                    "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(client_addr::text, 'local'), coalesce(state, '')
                     FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid",
                )
                .bind(db)
                .fetch_all(&mut c)
                .await;
                let _ = c.close().await;
                r
            })?;
            let list: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "pid {} (user {}, application {:?}, client {}, {})",
                        r.get::<i32, _>(0),
                        r.get::<String, _>(1),
                        r.get::<String, _>(2),
                        r.get::<String, _>(3),
                        r.get::<String, _>(4)
                    )
                })
                .collect();
            if list.is_empty() || Instant::now() >= deadline {
                return Ok(list);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Refuse, or terminate, other sessions on the database, per the policy.
    pub(super) fn handle_sessions(&self, db: &str) -> Result<()> {
        let others = self.other_sessions(db)?;
        if others.is_empty() {
            return Ok(());
        }
        match self.pg.sessions {
            Sessions::Refuse => bail!(
                "target {}: {} other session(s) are connected to database {db}: {}. Stop them (the app: a `before` hook), or set `sessions = \"terminate\"` on the target to end them before restoring; nothing was changed",
                self.spec.name,
                others.len(),
                others.join("; ")
            ),
            Sessions::Terminate => {
                let mut c = self.connect_server()?;
                crate::runtime::block_on(async {
                    let r = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    )
                    .bind(db)
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                    r
                })
                .with_context(|| format!("target {}: cannot terminate the other sessions on {db}", self.spec.name))?;
                let left = self.other_sessions(db)?;
                if !left.is_empty() {
                    bail!("target {}: sessions on {db} survived pg_terminate_backend: {}", self.spec.name, left.join("; "));
                }
                eprintln!("guard: target {}: terminated {} other session(s) on {db}: {}", self.spec.name, others.len(), others.join("; "));
                Ok(())
            }
        }
    }
}

/// The SQL run before the dump's own, in the restore's transaction: drop every user schema
/// (with everything in it, including what a failed migration added), recreate `public` as
/// recorded, and unlink large objects (the dump recreates its own).
pub(super) fn restore_preamble(rec: &TargetRecord) -> Result<String> {
    let mut s = String::from(
        "\\set ON_ERROR_STOP 1\nBEGIN;\nSET LOCAL lock_timeout = '60s';\n\
         DO $guard$ DECLARE s text; BEGIN\n\
           FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP\n\
             EXECUTE format('DROP SCHEMA %I CASCADE', s);\n\
           END LOOP;\n\
           PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;\n\
         END $guard$;\n",
    );
    if let Some(p) = rec.meta.get("public_schema") {
        let v: serde_json::Value = serde_json::from_str(p).context("manifest: public_schema")?;
        let owner = v["owner"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest: public_schema.owner"))?;
        s.push_str(&format!("CREATE SCHEMA public AUTHORIZATION {};\n", quote_ident(owner)));
        for g in v["grants"].as_array().cloned().unwrap_or_default() {
            let grantee = g[0].as_str().unwrap_or("");
            let privilege = g[1].as_str().unwrap_or("");
            if !matches!(privilege, "USAGE" | "CREATE") {
                continue;
            }
            let to = if grantee.is_empty() {
                "PUBLIC".to_string()
            } else {
                quote_ident(grantee)
            };
            s.push_str(&format!("GRANT {privilege} ON SCHEMA public TO {to};\n"));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_recreates_public_as_recorded() {
        let mut rec = TargetRecord::default();
        rec.meta.insert(
            "public_schema".into(),
            serde_json::json!({"owner": "pg_database_owner", "grants": [["", "USAGE"], ["bob\"x", "CREATE"]]})
                .to_string(),
        );
        let p = restore_preamble(&rec).unwrap();
        assert!(p.contains("BEGIN;"), "{p}");
        assert!(p.contains("DROP SCHEMA %I CASCADE"), "{p}");
        assert!(
            p.contains("CREATE SCHEMA public AUTHORIZATION \"pg_database_owner\";"),
            "{p}"
        );
        assert!(p.contains("GRANT USAGE ON SCHEMA public TO PUBLIC;"), "{p}");
        assert!(p.contains("GRANT CREATE ON SCHEMA public TO \"bob\"\"x\";"), "{p}");
        assert!(!p.contains("COMMIT"), "the preamble never commits: {p}");
    }
}
