//! What a dump of one database leaves out, recorded at snapshot time and put back in the
//! restore's transaction (red-team finding 16): the database's owner, comment, connection limit
//! and ACL, its settings (`ALTER DATABASE … SET`) and the settings of roles in it (`ALTER ROLE …
//! IN DATABASE … SET`). Also: the roles the database refers to, so that one the command dropped
//! can be recreated `NOLOGIN` for the dump's grants and owners to come back; and what a restore
//! cannot put back, found before the command runs.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;

use super::conn::{quote_ident, quote_literal};
use super::PgFormat;

/// One aclexplode row of the database's ACL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grantor: String,
    /// Empty: `PUBLIC`.
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

/// The settings of one role in the database (`role` empty: the database's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub role: String,
    /// `name=value` entries, in pg_db_role_setting's order.
    pub config: Vec<String>,
}

/// The database-level state of the target's database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbState {
    pub owner: String,
    pub comment: Option<String>,
    pub connlimit: i32,
    /// `datacl` as `aclitem` text, the default ACL when it is NULL, in order.
    pub acl: Vec<String>,
    /// The same ACL exploded, in order.
    pub grants: Vec<Grant>,
    pub settings: Vec<Settings>,
}

/// Settings whose value is a list of names, each quoted as an identifier when stored
/// (pg_dump's `variable_is_guc_list_quote`).
const LIST_QUOTE: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// `a, "b, c", "d""e"` → `a`, `b, c`, `d"e` (PostgreSQL's SplitGUCList).
fn split_guc_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    let mut quoted = false;
    loop {
        match chars.next() {
            None => {
                if !cur.trim().is_empty() || !out.is_empty() || quoted {
                    out.push(if quoted { cur.clone() } else { cur.trim().to_string() });
                }
                return out.into_iter().filter(|s: &String| !s.is_empty()).collect();
            }
            Some('"') if !quoted && cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
                loop {
                    match chars.next() {
                        None => break,
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            cur.push('"');
                        }
                        Some('"') => break,
                        Some(c) => cur.push(c),
                    }
                }
            }
            Some(',') => {
                out.push(if quoted {
                    std::mem::take(&mut cur)
                } else {
                    cur.trim().to_string()
                });
                cur.clear();
                quoted = false;
            }
            Some(c) if quoted => {
                // after a closing quote only white space belongs to this element
                if !c.is_whitespace() {
                    cur.push(c);
                }
            }
            Some(c) => cur.push(c),
        }
    }
}

/// `name TO value…` for `ALTER … SET`, from a stored `name=value` entry: the name with each
/// dotted part quoted, the value as one string literal, or one per element for list settings —
/// so the stored text comes back byte for byte (pg_dumpall's makeAlterConfigCommand).
pub fn set_clause(entry: &str) -> Option<String> {
    let (name, value) = entry.split_once('=')?;
    let qname = name.split('.').map(quote_ident).collect::<Vec<_>>().join(".");
    let values = if LIST_QUOTE.contains(&name.to_ascii_lowercase().as_str()) {
        let parts = split_guc_list(value);
        if parts.is_empty() {
            "''".to_string()
        } else {
            parts.iter().map(|p| quote_literal(p)).collect::<Vec<_>>().join(", ")
        }
    } else {
        quote_literal(value)
    };
    Some(format!("{qname} TO {values}"))
}

/// A text array literal: `ARRAY['a', 'b']::pg_catalog.text[]`, or NULL for `None`.
fn text_array(v: Option<&[String]>) -> String {
    match v {
        None => "NULL::pg_catalog.text[]".into(),
        Some(v) => format!(
            "ARRAY[{}]::pg_catalog.text[]",
            v.iter().map(|s| quote_literal(s)).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn opt_literal(v: Option<&str>) -> String {
    v.map(quote_literal).unwrap_or_else(|| "NULL".into())
}

impl DbState {
    /// Lines describing the state, for the `@database` fingerprint (the ACL order-independent).
    pub fn lines(&self) -> Vec<String> {
        let mut acl = self.acl.clone();
        acl.sort();
        let mut v = vec![
            format!("owner {}", self.owner),
            format!(
                "comment {}",
                self.comment
                    .as_deref()
                    .map(quote_literal)
                    .unwrap_or_else(|| "NULL".into())
            ),
            format!("connlimit {}", self.connlimit),
            format!("acl {}", acl.join(" ")),
        ];
        for s in &self.settings {
            v.push(format!(
                "settings {} {}",
                if s.role.is_empty() { "-" } else { &s.role },
                text_array(Some(&s.config))
            ));
        }
        v
    }

    /// A statement list for the restore's transaction that makes the live database's state
    /// this one, touching only what differs. With `drill` (a scratch copy owned by the drill's
    /// role): the comment, the connection limit and the database's own settings only.
    pub fn apply_sql(&self, drill: bool) -> String {
        let mut b = String::new();
        let db = "pg_catalog.quote_ident(db)";
        b.push_str("DECLARE db text := pg_catalog.current_database(); d record; r record;\nBEGIN\n");
        let read = "SELECT oid, datdba, datacl, datconnlimit INTO d FROM pg_catalog.pg_database WHERE datname = db;\n";
        b.push_str(read);
        if !drill {
            b.push_str(&format!(
                "IF pg_catalog.pg_get_userbyid(d.datdba) OPERATOR(pg_catalog.<>) {o} THEN\n  EXECUTE 'ALTER DATABASE ' || {db} || ' OWNER TO ' || pg_catalog.quote_ident({o});\nEND IF;\n",
                o = quote_literal(&self.owner)
            ));
            b.push_str(read);
        }
        b.push_str(&format!(
            "IF pg_catalog.shobj_description(d.oid, 'pg_database') IS DISTINCT FROM {c} THEN\n  EXECUTE 'COMMENT ON DATABASE ' || {db} || ' IS ' || pg_catalog.quote_nullable({c}::text);\nEND IF;\n",
            c = opt_literal(self.comment.as_deref())
        ));
        b.push_str(&format!(
            "IF d.datconnlimit OPERATOR(pg_catalog.<>) {n} THEN\n  EXECUTE 'ALTER DATABASE ' || {db} || ' CONNECTION LIMIT {n}';\nEND IF;\n",
            n = self.connlimit
        ));
        if !drill {
            let mut sorted = self.acl.clone();
            sorted.sort();
            b.push_str(&format!(
                "IF (SELECT pg_catalog.array_agg(a::text ORDER BY a::text) FROM pg_catalog.unnest(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a)\n   IS DISTINCT FROM {want} THEN\n",
                want = text_array(Some(&sorted))
            ));
            b.push_str(&format!(
                "  FOR r IN SELECT DISTINCT grantee FROM pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) LOOP\n    EXECUTE 'REVOKE ALL ON DATABASE ' || {db} || ' FROM ' || CASE WHEN r.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r.grantee)) END || ' CASCADE';\n  END LOOP;\n"
            ));
            // Grants by the owner first (in order), then those by other grantors, as them.
            let by_owner = self.grants.iter().filter(|g| g.grantor == self.owner);
            let by_others = self.grants.iter().filter(|g| g.grantor != self.owner);
            for g in by_owner.chain(by_others) {
                let to = if g.grantee.is_empty() {
                    "PUBLIC".to_string()
                } else {
                    quote_ident(&g.grantee)
                };
                let head = format!("GRANT {} ON DATABASE ", g.privilege);
                let rest = format!(" TO {to}{}", if g.grantable { " WITH GRANT OPTION" } else { "" });
                let as_other = g.grantor != self.owner;
                if as_other {
                    b.push_str(&format!(
                        "  EXECUTE 'SET ROLE ' || pg_catalog.quote_ident({});\n",
                        quote_literal(&g.grantor)
                    ));
                }
                b.push_str(&format!(
                    "  EXECUTE {} || {db} || {};\n",
                    quote_literal(&head),
                    quote_literal(&rest)
                ));
                if as_other {
                    b.push_str("  EXECUTE 'RESET ROLE';\n");
                }
            }
            b.push_str("END IF;\n");
        }
        // Settings: the database's own, then (not in drills) each role's.
        let own = self.settings.iter().find(|s| s.role.is_empty());
        b.push_str(&format!(
            "IF (SELECT setconfig FROM pg_catalog.pg_db_role_setting WHERE setdatabase OPERATOR(pg_catalog.=) d.oid AND setrole OPERATOR(pg_catalog.=) 0)\n   IS DISTINCT FROM {} THEN\n  EXECUTE 'ALTER DATABASE ' || {db} || ' RESET ALL';\n",
            text_array(own.map(|s| s.config.as_slice()))
        ));
        for e in own.map(|s| s.config.as_slice()).unwrap_or_default() {
            if let Some(c) = set_clause(e) {
                b.push_str(&format!(
                    "  EXECUTE 'ALTER DATABASE ' || {db} || {};\n",
                    quote_literal(&format!(" SET {c}"))
                ));
            }
        }
        b.push_str("END IF;\n");
        if !drill {
            let roles: Vec<&Settings> = self.settings.iter().filter(|s| !s.role.is_empty()).collect();
            b.push_str(&format!(
                "FOR r IN SELECT pg_catalog.pg_get_userbyid(s.setrole) AS name FROM pg_catalog.pg_db_role_setting s\n         WHERE s.setdatabase OPERATOR(pg_catalog.=) d.oid AND s.setrole OPERATOR(pg_catalog.<>) 0\n           AND NOT pg_catalog.pg_get_userbyid(s.setrole) OPERATOR(pg_catalog.=) ANY ({}) LOOP\n  EXECUTE 'ALTER ROLE ' || pg_catalog.quote_ident(r.name) || ' IN DATABASE ' || {db} || ' RESET ALL';\nEND LOOP;\n",
                text_array(Some(&roles.iter().map(|s| s.role.clone()).collect::<Vec<_>>()))
            ));
            for s in roles {
                let role = quote_literal(&s.role);
                b.push_str(&format!(
                    "IF (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) s.setrole\n     WHERE s.setdatabase OPERATOR(pg_catalog.=) d.oid AND o.rolname OPERATOR(pg_catalog.=) {role}) IS DISTINCT FROM {} THEN\n  EXECUTE 'ALTER ROLE ' || pg_catalog.quote_ident({role}) || ' IN DATABASE ' || {db} || ' RESET ALL';\n",
                    text_array(Some(&s.config))
                ));
                for e in &s.config {
                    if let Some(c) = set_clause(e) {
                        b.push_str(&format!(
                            "  EXECUTE 'ALTER ROLE ' || pg_catalog.quote_ident({role}) || ' IN DATABASE ' || {db} || {};\n",
                            quote_literal(&format!(" SET {c}"))
                        ));
                    }
                }
                b.push_str("END IF;\n");
            }
        }
        b.push_str("END");
        b
    }
}

/// The roles the database refers to: owners, grantees (of objects, columns, large objects,
/// default privileges and the database itself), policy and user-mapping roles, roles with
/// settings in it, and the database's owner. Bootstrap roles are not recorded in
/// `pg_shdepend`, but they cannot be dropped either.
const REFERENCED_ROLES: &str = "
WITH d AS (SELECT oid, datdba, datacl FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE r.oid IN (
    SELECT s.refobjid FROM pg_catalog.pg_shdepend s, d
     WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
       AND (s.dbid = d.oid OR (s.dbid = 0 AND s.classid = 'pg_catalog.pg_database'::pg_catalog.regclass AND s.objid = d.oid))
    UNION SELECT s.setrole FROM pg_catalog.pg_db_role_setting s, d WHERE s.setdatabase = d.oid
    UNION SELECT d.datdba FROM d
    UNION SELECT a.grantor FROM d, pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a
    UNION SELECT a.grantee FROM d, pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a)
ORDER BY 1";

pub(super) async fn referenced_roles(c: &mut PgConnection) -> Result<Vec<String>> {
    sqlx::query_scalar(REFERENCED_ROLES)
        .fetch_all(&mut *c)
        .await
        .context("reading the roles the database refers to")
}

/// Of `roles`, those that no longer exist.
pub(super) async fn missing_roles(c: &mut PgConnection, roles: &[String]) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT r FROM pg_catalog.unnest($1::text[]) r WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) ORDER BY 1",
    )
    .bind(roles)
    .fetch_all(&mut *c)
    .await
    .context("looking up the roles the snapshot refers to")
}

impl DbState {
    /// The state of the connection's database (inside the snapshot's transaction: the shared
    /// catalogs are read in the same snapshot).
    pub(super) async fn capture(c: &mut PgConnection) -> Result<DbState> {
        let (owner, comment, connlimit, acl): (String, Option<String>, i32, Vec<String>) = sqlx::query_as(
            "SELECT pg_catalog.pg_get_userbyid(d.datdba)::text, pg_catalog.shobj_description(d.oid, 'pg_database'), d.datconnlimit,
                    coalesce((SELECT pg_catalog.array_agg(a::text) FROM pg_catalog.unnest(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a), '{}')
             FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()",
        )
        .fetch_one(&mut *c)
        .await
        .context("reading the database's owner, comment and ACL")?;
        let grants: Vec<(String, String, String, bool)> = sqlx::query_as(
            "SELECT pg_catalog.pg_get_userbyid(e.grantor)::text, CASE WHEN e.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(e.grantee)::text END,
                    e.privilege_type, e.is_grantable
             FROM pg_catalog.pg_database d,
                  pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) WITH ORDINALITY AS e(grantor, grantee, privilege_type, is_grantable, n)
             WHERE d.datname = pg_catalog.current_database() ORDER BY e.n",
        )
        .fetch_all(&mut *c)
        .await
        .context("reading the database's ACL")?;
        let settings: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT coalesce(r.rolname::text, ''), s.setconfig FROM pg_catalog.pg_db_role_setting s
             LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
             WHERE s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
             ORDER BY 1",
        )
        .fetch_all(&mut *c)
        .await
        .context("reading the database's settings")?;
        Ok(DbState {
            owner,
            comment,
            connlimit,
            acl,
            grants: grants
                .into_iter()
                .map(|(grantor, grantee, privilege, grantable)| Grant {
                    grantor,
                    grantee,
                    privilege,
                    grantable,
                })
                .collect(),
            settings: settings
                .into_iter()
                .map(|(role, config)| Settings { role, config })
                .collect(),
        })
    }
}

/// What a restore of this database cannot put back, read before the command runs: `warnings`
/// (the restore still runs; they say what stays as the command leaves it) and `refusals` (the
/// restore would fail: the command must not run).
#[derive(Default, Debug)]
pub(super) struct Findings {
    pub warnings: Vec<String>,
    pub refusals: Vec<String>,
}

fn list(v: &[String]) -> String {
    v.join(", ")
}

/// `roles`: the roles the database refers to ([`referenced_roles`]). What any role meets
/// (subscriptions, extension versions) comes first; a superuser can restore everything else.
/// `db` is the database a restore goes into (the live one, also when `c` is on its clone,
/// which holds no privilege but guard's `CONNECT`).
pub(super) async fn findings(
    c: &mut PgConnection,
    format: PgFormat,
    server_num: u32,
    roles: &[String],
    db: &str,
) -> Result<Findings> {
    let mut f = Findings::default();
    subscription_findings(c, format, server_num, &mut f).await?;
    extension_version_findings(c, &mut f).await?;
    let (superuser, createrole, temp): (bool, bool, bool) = sqlx::query_as(
        "SELECT r.rolsuper, r.rolcreaterole, pg_catalog.has_database_privilege($1::text, 'TEMPORARY')
         FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
    )
    .bind(db)
    .fetch_one(&mut *c)
    .await
    .context("reading the connecting role's attributes")?;
    if superuser {
        return Ok(f);
    }
    if !temp {
        f.refusals.push(
            "the restore needs the TEMPORARY privilege on the database (GRANT TEMPORARY ON DATABASE … TO the role guard connects as)".into(),
        );
    }
    superuser_only_findings(c, server_num, &mut f).await?;
    if !createrole {
        no_createrole_findings(c, roles, &mut f).await?;
    }
    Ok(f)
}

/// Subscriptions: a plain dump's restore would recreate them (refused); a custom one leaves
/// them alone (warned).
async fn subscription_findings(
    c: &mut PgConnection,
    format: PgFormat,
    server_num: u32,
    f: &mut Findings,
) -> Result<()> {
    // Subscriptions and publications came with PostgreSQL 10.
    let subs: Vec<String> = if server_num < 100000 {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "SELECT subname::text FROM pg_catalog.pg_subscription
             WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) ORDER BY 1",
        )
        .fetch_all(&mut *c)
        .await
        .context("listing subscriptions")?
    };
    if !subs.is_empty() {
        if format == PgFormat::Plain {
            f.refusals.push(format!(
                "subscription(s) {}: a plain dump recreates them, which fails while they exist (use format = \"custom\": its restore leaves subscriptions alone)",
                list(&subs)
            ));
        } else {
            f.warnings.push(format!(
                "subscription(s) {} stay as the command leaves them: a restore never drops or recreates a subscription (that would touch replication slots on the publisher)",
                list(&subs)
            ));
        }
    }
    Ok(())
}

/// Extensions whose installed version is not the server's default (a restore recreates the
/// default), or that the server no longer has (refused).
async fn extension_version_findings(c: &mut PgConnection, f: &mut Findings) -> Result<()> {
    let exts: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT e.extname::text, e.extversion, a.default_version FROM pg_catalog.pg_extension e
         LEFT JOIN pg_catalog.pg_available_extensions a ON a.name = e.extname
         WHERE e.oid >= 16384 AND a.default_version IS DISTINCT FROM e.extversion ORDER BY 1",
    )
    .fetch_all(&mut *c)
    .await
    .context("listing extensions")?;
    for (name, version, default) in exts {
        match default {
            None => f.refusals.push(format!(
                "extension {name} {version} is installed but not available on the server any more: a restore cannot recreate it"
            )),
            Some(d) => f.warnings.push(format!(
                "extension {name} is at version {version}; a restore recreates it at {d}, its default (a dump records no version; ALTER EXTENSION {name} UPDATE TO '{version}' afterwards works only where the extension ships that path)"
            )),
        }
    }
    Ok(())
}

/// What only a superuser can recreate: event triggers, FOR ALL TABLES / TABLES IN SCHEMA
/// publications, objects owned by roles the connecting role is not a member of, untrusted
/// extensions.
async fn superuser_only_findings(c: &mut PgConnection, server_num: u32, f: &mut Findings) -> Result<()> {
    let evts: Vec<String> = sqlx::query_scalar("SELECT evtname::text FROM pg_catalog.pg_event_trigger ORDER BY 1")
        .fetch_all(&mut *c)
        .await
        .context("listing event triggers")?;
    if !evts.is_empty() {
        f.refusals.push(format!(
            "event trigger(s) {}: only a superuser can recreate an event trigger",
            list(&evts)
        ));
    }
    let in_schema = if server_num >= 150000 {
        " OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace n WHERE n.pnpubid = p.oid)"
    } else {
        ""
    };
    let pubs: Vec<String> = if server_num < 100000 {
        Vec::new()
    } else {
        sqlx::query_scalar(&format!(
            "SELECT pubname::text FROM pg_catalog.pg_publication p WHERE p.puballtables{in_schema} ORDER BY 1"
        ))
        .fetch_all(&mut *c)
        .await
        .context("listing publications")?
    };
    if !pubs.is_empty() {
        f.refusals.push(format!(
            "publication(s) {} (FOR ALL TABLES or TABLES IN SCHEMA): only a superuser can recreate them",
            list(&pubs)
        ));
    }
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT pg_catalog.pg_get_userbyid(s.refobjid)::text FROM pg_catalog.pg_shdepend s
         WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
           AND s.deptype = 'o' AND NOT pg_catalog.pg_has_role(current_user, s.refobjid, 'MEMBER') ORDER BY 1",
    )
    .fetch_all(&mut *c)
    .await
    .context("listing object owners")?;
    if !owners.is_empty() {
        f.refusals.push(format!(
            "objects owned by {}, a role (or roles) the connecting role is not a member of: the restore could not set their owners",
            list(&owners)
        ));
    }
    // Trusted extensions (which a database owner may create) came with PostgreSQL 13.
    let trusted = if server_num >= 130000 { " AND NOT v.trusted" } else { "" };
    let untrusted: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT e.extname::text FROM pg_catalog.pg_extension e
         JOIN pg_catalog.pg_available_extension_versions v ON v.name = e.extname AND v.version = e.extversion
         WHERE e.oid >= 16384 AND v.superuser{trusted} ORDER BY 1"
    ))
    .fetch_all(&mut *c)
    .await
    .context("listing extensions")?;
    if !untrusted.is_empty() {
        f.refusals.push(format!(
            "extension(s) {}: only a superuser can create them again",
            list(&untrusted)
        ));
    }
    Ok(())
}

/// Without CREATEROLE: other roles' settings in this database and the roles the database
/// refers to cannot be put back if the command changes or drops them.
async fn no_createrole_findings(c: &mut PgConnection, roles: &[String], f: &mut Findings) -> Result<()> {
    let others: Vec<String> = sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
         WHERE s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
           AND r.rolname <> current_user ORDER BY 1",
    )
    .fetch_all(&mut *c)
    .await
    .context("listing role settings")?;
    if !others.is_empty() {
        f.warnings.push(format!(
            "the settings of role(s) {} in this database (ALTER ROLE … IN DATABASE … SET): if the command changes them, the restore fails, since the connecting role has no CREATEROLE",
            list(&others)
        ));
    }
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *c)
        .await?;
    let droppable: Vec<String> = roles.iter().filter(|r| **r != me).cloned().collect();
    if !droppable.is_empty() {
        f.warnings.push(format!(
            "if the command drops role(s) {}, the restore cannot recreate them (the connecting role has no CREATEROLE) and fails",
            list(&droppable)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_split_like_postgres() {
        assert_eq!(
            split_guc_list("\"$user\", public, billing"),
            ["$user", "public", "billing"]
        );
        assert_eq!(
            split_guc_list("billing, \"odd, schema\", public"),
            ["billing", "odd, schema", "public"]
        );
        assert_eq!(split_guc_list("\"a\"\"b\""), ["a\"b"]);
        assert_eq!(split_guc_list(""), Vec::<String>::new());
        assert_eq!(
            set_clause("search_path=billing, \"odd, schema\", public").unwrap(),
            "\"search_path\" TO 'billing', 'odd, schema', 'public'"
        );
        assert_eq!(set_clause("work_mem=7MB").unwrap(), "\"work_mem\" TO '7MB'");
        assert_eq!(
            set_clause("myapp.tenant=it's").unwrap(),
            "\"myapp\".\"tenant\" TO 'it''s'"
        );
    }
}
