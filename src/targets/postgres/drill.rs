//! Restore drills: the snapshot restored into a scratch database, dropped afterwards.

use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

use super::conn::{quote_ident, ConnInfo, Session};
use super::restore::create_database_sql;
use super::PostgresTarget;
use super::{PostgresSpec, Sessions};
use crate::manifest::TargetRecord;
use crate::secrets;
use crate::store::Store;
use crate::targets::Target;
use crate::targets::{KindSpec, TargetSpec};

/// A scratch database created for a restore drill; dropped when this is.
pub(super) struct ScratchDb {
    pub(super) conn: ConnInfo,
    pub(super) name: String,
}

impl ScratchDb {
    pub(super) fn drop_now(&self) -> Result<()> {
        let mut c = match Session::open(&self.conn.sqlx(Some("postgres"))?) {
            Ok(c) => c,
            Err(_) => Session::open(&self.conn.sqlx(Some("template1"))?)?,
        };
        c.execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&self.name)))?;
        Ok(())
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Err(e) = self.drop_now() {
            crate::errln!(
                "guard: could not drop the drill's scratch database {}: {}; drop it by hand",
                self.name,
                secrets::redact(&format!("{e:#}"))
            );
        }
    }
}

impl PostgresTarget {
    /// Restore `rec` into a new scratch database — on `drill_url`'s server (its database name
    /// is the scratch database's) or beside the live one — and prove it matches the snapshot.
    pub(super) fn drill_into_scratch(&self, rec: &TargetRecord, store: &dyn Store) -> Result<PostgresTarget> {
        let (mut conn, shown, name) = match &self.pg.drill_url {
            Some(u) => {
                let c = ConnInfo::parse(u).context("drill_url")?;
                if let Some(p) = &c.password {
                    secrets::register(p);
                }
                let name = c
                    .dbname
                    .clone()
                    .unwrap_or_else(|| format!("guard_drill_{}", self.spec.name.replace(['-', '.'], "_")));
                (c, secrets::redact_url(u), name)
            }
            None => (
                self.conn.clone(),
                self.source(),
                format!(
                    "guard_drill_{}_{:08x}",
                    self.spec.name.replace(['-', '.'], "_").to_lowercase(),
                    rand::random::<u32>()
                ),
            ),
        };
        conn.dbname = Some(name.clone());
        let mut maint = {
            let o = conn.sqlx(Some("postgres"))?;
            let o1 = conn.sqlx(Some("template1"))?;
            Session::open(&o).or_else(|_| Session::open(&o1)).map_err(|e| {
                anyhow!(
                    "cannot connect to the drill server {shown}: {}",
                    secrets::redact(&e.to_string())
                )
            })?
        };
        let created: Result<()> = (|| {
            let exists: Option<i32> = maint.scalar_optional("SELECT 1 FROM pg_database WHERE datname = $1", &name)?;
            if exists.is_some() {
                bail!("the drill's scratch database {name} already exists on {shown}; guard never drops a database it did not create (drop it by hand if a killed drill left it)");
            }
            let sql = create_database_sql(&name, rec, false);
            maint.execute(&sql).with_context(|| format!("creating the drill's scratch database {name} on {shown} (set drill_url to a server where guard may create databases)"))?;
            Ok(())
        })();
        drop(maint);
        created?;
        let scratch = ScratchDb {
            conn: conn.clone(),
            name: name.clone(),
        };
        let pg = PostgresSpec {
            url: format!("{shown} (scratch database {name})"),
            sessions: Sessions::Refuse,
            drill_url: None,
            snapshot: Default::default(),
            ..self.pg.clone()
        };
        let t = PostgresTarget {
            spec: TargetSpec {
                kind: KindSpec::Postgres(pg.clone()),
                ..self.spec.clone()
            },
            pg,
            conn,
            from_manifest: false,
            tools: OnceLock::new(),
            scratch: Some(scratch),
            shown_db: None,
            held: Default::default(),
            swap_session: Default::default(),
        };
        t.restore(rec, store)?;
        t.verify_restored(rec)
            .context("the restored copy does not match the snapshot")?;
        Ok(t)
    }
}
