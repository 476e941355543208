//! A throwaway PostgreSQL cluster per test: `initdb` + `pg_ctl` in a temp directory, listening
//! only on a unix socket in that directory (no TCP port to collide on), run as the `postgres`
//! user when the tests run as root (initdb refuses root), stopped on drop.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Cluster {
    /// Holds `data/`, `sock/` and the server log.
    pub root: tempfile::TempDir,
    pub bin: PathBuf,
    pub port: u16,
    /// The superuser (`postgres`) password, when the cluster requires one.
    pub password: Option<String>,
    as_postgres: bool,
}

/// The server binaries: `$GUARD_TEST_PG_BIN`, or the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> PathBuf {
    if let Some(d) = std::env::var_os("GUARD_TEST_PG_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/test.sh, or set GUARD_TEST_PG_BIN")
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let b = e.path().join("bin");
            b.join("initdb").is_file().then_some((v, b))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no /usr/lib/postgresql/*/bin with initdb: run scripts/test.sh")
        .1
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// A cluster with trust authentication.
    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// A cluster whose `postgres` superuser needs `password` (scram-sha-256), even on the socket.
    pub fn start_with_password(password: &str) -> Cluster {
        Cluster::start_with(Some(password.to_string()))
    }

    fn start_with(password: Option<String>) -> Cluster {
        let bin = pg_bin();
        let root = tempfile::Builder::new().prefix("guard-pg-").tempdir().expect("tempdir");
        // Traversable by the postgres user; the data directory itself stays private to it.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let as_postgres = is_root();
        for d in ["data", "sock"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        std::fs::set_permissions(root.path().join("data"), std::fs::Permissions::from_mode(0o700)).unwrap();
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(root.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown to postgres failed");
        }
        let port = 20000 + (std::process::id() as u16 % 1000) * 40 + rand_port_offset();
        let c = Cluster {
            root,
            bin,
            port,
            password,
            as_postgres,
        };
        let mut initdb = c.server_cmd("initdb");
        initdb
            .args(["-D"])
            .arg(c.data())
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
        if let Some(pw) = &c.password {
            let pwfile = c.root.path().join("pwfile");
            std::fs::write(&pwfile, format!("{pw}\n")).unwrap();
            if c.as_postgres {
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&pwfile)
                    .status()
                    .unwrap();
            }
            initdb
                .args(["-A", "scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()));
        } else {
            initdb.args(["-A", "trust"]);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(c.root.path().join("pwfile"));
        let opts = format!(
            "-k {} -c listen_addresses='' -p {} -c fsync=off -c max_connections=30",
            c.sock().display(),
            c.port
        );
        let out = c
            .server_cmd("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(c.data())
            .arg("-l")
            .arg(c.root.path().join("server.log"))
            .args(["-o", &opts])
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(c.root.path().join("server.log")).unwrap_or_default()
        );
        c
    }

    fn server_cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// A shell command that restarts the server (`pg_ctl restart -m fast`, as `postgres` when
    /// root): every session ends, the cluster comes back on the same socket.
    pub fn restart_sh(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let run_as = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "{run_as}'{pg_ctl}' restart -w -t 60 -m fast -D '{}' >/dev/null",
            self.data().display()
        )
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn sock(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    /// `postgres://postgres[:pw]@/DB?host=SOCKDIR&port=PORT`
    pub fn url(&self, db: &str) -> String {
        let auth = match &self.password {
            Some(pw) => format!("postgres:{pw}@"),
            None => "postgres@".to_string(),
        };
        format!(
            "postgres://{auth}/{db}?host={}&port={}",
            self.sock().display(),
            self.port
        )
    }

    /// A client command (psql, pg_dump, …) connected to `db` through the environment.
    pub fn client(&self, tool: &str, db: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.env("PGHOST", self.sock())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", db)
            .env_remove("PGSERVICE")
            .stdin(Stdio::null());
        if let Some(pw) = &self.password {
            c.env("PGPASSWORD", pw);
        }
        c
    }

    /// Run SQL with psql (stop on the first error) and return its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .client("psql", db)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Run a SQL file with psql (stop on the first error).
    pub fn psql_file(&self, db: &str, file: &Path) {
        let out = self
            .client("psql", db)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(file)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -f {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn createdb(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    }

    /// A plain dump of `db` without the per-run `\restrict` keys: equal text means equal
    /// schema and data.
    pub fn dump(&self, db: &str) -> String {
        self.dump_with(db, &["-Fp", "--no-comments"])
    }

    /// `pg_dump` of `db` with `args`, without the per-run `\restrict` keys.
    pub fn dump_with(&self, db: &str, args: &[&str]) -> String {
        let out = self.client("pg_dump", db).args(args).output().expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn rand_port_offset() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(0);
    N.fetch_add(1, Ordering::SeqCst) % 40
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .server_cmd("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
