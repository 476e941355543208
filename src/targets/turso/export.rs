//! Snapshot: the branch made, checked and fingerprinted, and its `GET /dump` exported to the
//! store (with `export = true`) and checked whole; loading an export back into SQLite.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::hrana::transport;
use super::platform::DbInfo;
use super::TursoRestore;
use super::TursoTarget;
use crate::artifact::read_artifact;
use crate::manifest::TargetRecord;
use crate::store::Store;
use crate::targets::sql::fingerprint::{compare_fingerprints, fingerprints};
use crate::targets::sql::Val;
use crate::targets::SnapshotCtx;

/// How long a new branch may take to answer before the snapshot fails.
pub(super) const BRANCH_READY: Duration = Duration::from_secs(60);

/// Streams a `/dump` response as `Read`, remembering its size, start and end.
pub(super) struct DumpReader {
    pub(super) resp: reqwest::Response,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) total: u64,
    pub(super) head: Vec<u8>,
    pub(super) tail: Vec<u8>,
}

impl DumpReader {
    pub(super) fn new(resp: reqwest::Response) -> Self {
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
pub(super) fn track(head: &mut Vec<u8>, tail: &mut Vec<u8>, chunk: &[u8]) {
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
pub(super) fn check_dump(total: u64, head: &[u8], tail: &[u8]) -> Result<()> {
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
pub(super) fn load_export(store: &dyn Store, a: &crate::manifest::Artifact, db: &Path) -> Result<rusqlite::Connection> {
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
            .map_err(|e| {
                let hint = if e.to_string().contains("no such column: inf") {
                    " (it holds ±Infinity, which sqld's /dump writes as `inf`, libsql-server connection/dump/exporter.rs, and SQLite cannot read back; the branch itself holds the values)"
                } else {
                    ""
                };
                anyhow::Error::new(e).context(format!("the export does not load into SQLite{hint}"))
            })?;
        Ok(c)
    })()
    .with_context(|| format!("{}/{}", store.location(), a.key));
    let _ = std::fs::remove_file(&sql_path);
    r
}

/// The export loads into an empty SQLite file at `db` and holds the recorded data.
pub(super) fn check_export(
    rec: &TargetRecord,
    store: &dyn Store,
    a: &crate::manifest::Artifact,
    db: &Path,
) -> Result<()> {
    let mut c = load_export(store, a, db)?;
    let got = fingerprints(&mut c, &rec.hashed_items(), false)?;
    compare_fingerprints(&rec.fingerprints, &got)
        .context("the export's data differs from the fingerprints recorded at snapshot time")
        .with_context(|| format!("{}/{}", store.location(), a.key))
}

impl TursoTarget {
    pub(super) fn snapshot_inner(
        &self,
        ctx: &SnapshotCtx,
        rec: &mut TargetRecord,
        info: &DbInfo,
        src: &DbInfo,
    ) -> Result<()> {
        // The service must have taken the seed: a create whose seed was dropped (guard sends
        // `seed.name`, as the OpenAPI and the official TypeScript client do; Turso's CLI sends
        // `seed.value`) makes an empty database without a parent.
        let back = self.get_database(&info.name)?;
        if back.parent.as_deref() != Some(self.t.database.as_str()) {
            bail!(
                "branch database {} was created, but the Platform API reports its parent as {} instead of {}: the service did not take the seed (seed.name = {}), so the branch is not a copy of {}; the snapshot is refused",
                info.name,
                back.parent.as_deref().unwrap_or("none"),
                self.t.database,
                self.t.database,
                self.t.database
            );
        }
        let branch = self.branch_db(info)?;
        branch.answer(BRANCH_READY, true)?;
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
        rec.fingerprints = self.read_fingerprints(&branch, ctx.fingerprint, ctx.allow_absent)?;

        // The branch is the state a restore brings back. With the application stopped it must
        // be exactly the source; otherwise Turso's point in time may lag its timestamp by up to
        // 15 s: say so when the source already differs from it.
        let source = self.source_db()?;
        let now = self.read_fingerprints(&source, ctx.fingerprint, ctx.allow_absent)?;
        let tables = |f: &std::collections::BTreeMap<String, crate::manifest::Fingerprint>| {
            f.get("@schema").map(|s| s.rows).unwrap_or(0)
        };
        if tables(&rec.fingerprints) == 0 && tables(&now) > 0 {
            bail!(
                "branch database {} is empty while {} has {} schema objects: the service did not copy the source; the snapshot is refused",
                info.name,
                src.name,
                tables(&now)
            );
        }
        if let Err(diff) = compare_fingerprints(&rec.fingerprints, &now) {
            let msg = crate::secrets::redact(&format!("{diff:#}"));
            if ctx.quiesced {
                bail!(
                    "branch {} differs from {} although the before hooks stopped the application ({msg}): something is still writing, or the service did not copy the current state; the snapshot is refused",
                    info.name,
                    src.name
                );
            }
            crate::errln!(
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
