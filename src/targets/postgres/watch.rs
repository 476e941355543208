//! Sessions that block guard's own (red-team finding 12). While a step talks to the server —
//! a snapshot's queries and pg_dump, a restore's psql — a thread on a connection of its own
//! asks every half second which sessions block guard's (`pg_blocking_pids` of the sessions
//! named [`app_name`]). It remembers them, so an error can name them; with `terminate` (a
//! rescue snapshot or a restore under `sessions = "terminate"`) it ends any seen blocking twice
//! in a row, idle-in-transaction ones included, and says so; and it cancels a statement of
//! guard's that has sat blocked past [`LOCK_WAIT`] (a backstop: the dump's own `SET lock_timeout
//! = 0` lifts the restore session's bound for the rest of the dump).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Row as _;

use super::conn::{app_name, ConnInfo, Session, LOCK_WAIT};
use crate::secrets;

const POLL: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Seen {
    /// pid → description of each session seen blocking one of guard's.
    blockers: BTreeMap<i32, String>,
    terminated: Vec<String>,
    /// guard's own statements cancelled after waiting past the bound.
    cancelled: usize,
}

/// What a watch saw.
#[derive(Default, Debug)]
pub(super) struct Report {
    pub blockers: Vec<String>,
    pub terminated: Vec<String>,
    pub cancelled: usize,
}

impl Report {
    /// The sessions that blocked guard, for an error message: `None` when there were none.
    pub fn blocked_by(&self) -> Option<String> {
        if self.blockers.is_empty() {
            return None;
        }
        let mut s = format!(
            "blocked by {} session(s) holding locks: {}",
            self.blockers.len(),
            self.blockers.join("; ")
        );
        if !self.terminated.is_empty() {
            s.push_str(&format!("; terminated {} of them", self.terminated.len()));
        }
        if self.cancelled > 0 {
            s.push_str(&format!(
                "; guard cancelled its own statement after waiting more than {} s",
                LOCK_WAIT.as_secs()
            ));
        }
        Some(s)
    }
}

pub(super) struct BlockerWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlockerWatch {
    /// Watch guard's sessions on database `db` while `step` ("the rescue snapshot", "the
    /// restore") runs; end the sessions that block them when `terminate`.
    pub fn start(conn: &ConnInfo, db: &str, target: &str, step: &'static str, terminate: bool) -> BlockerWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (conn, db, target) = (conn.clone(), db.to_string(), target.to_string());
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || watch(&conn, &db, &target, step, terminate, &stop, &seen))
        };
        BlockerWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stop watching; what was seen.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let s = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        Report {
            blockers: s.blockers.into_values().collect(),
            terminated: s.terminated,
            cancelled: s.cancelled,
        }
    }
}

impl Drop for BlockerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Sessions blocking one of guard's: (guard's pid, blocker's pid, description).
const BLOCKERS: &str = "
SELECT w.pid, b.pid,
       'pid ' || b.pid || ' (user ' || coalesce(b.usename, '?') || ', application ' || pg_catalog.quote_literal(coalesce(b.application_name, ''))
       || ', client ' || coalesce(b.client_addr::text, 'local') || ', ' || coalesce(b.state, '?')
       || coalesce(', holding ' || (SELECT pg_catalog.string_agg(DISTINCT l.mode || ' on ' || l.relation::pg_catalog.regclass::text, ', ')
                                    FROM pg_catalog.pg_locks l
                                    WHERE l.pid = b.pid AND l.granted AND l.relation IS NOT NULL AND l.mode <> 'AccessShareLock'
                                      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())), '')
       || '; query: ' || CASE WHEN b.query ILIKE '%password%' THEN '(hidden: it mentions a password)'
                          ELSE pg_catalog.left(pg_catalog.regexp_replace(coalesce(b.query, ''), '\\s+', ' ', 'g'), 160) END || ')'
FROM pg_catalog.pg_stat_activity w
CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS x(pid)
JOIN pg_catalog.pg_stat_activity b ON b.pid = x.pid
WHERE w.application_name = $1 AND w.pid <> pg_catalog.pg_backend_pid()
  AND b.application_name IS DISTINCT FROM $1";

fn watch(conn: &ConnInfo, db: &str, target: &str, step: &str, terminate: bool, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut c: Option<Session> = None;
    // Blockers of the previous poll (ended when seen twice), and since when each of guard's
    // sessions has been blocked.
    let mut previous: Vec<i32> = Vec::new();
    let mut blocked_since: BTreeMap<i32, Instant> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(POLL);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if c.is_none() {
            c = conn
                .sqlx(Some(db))
                .ok()
                .and_then(|o| Session::open_within(&o, POLL * 4).ok());
        }
        let Some(conn_) = c.as_mut() else { continue };
        let rows: Vec<(i32, i32, String)> = match conn_.fetch_all_with(BLOCKERS, app_name()) {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    (
                        r.get::<i32, _>(0),
                        r.get::<i32, _>(1),
                        r.get::<Option<String>, _>(2).unwrap_or_default(),
                    )
                })
                .collect(),
            Err(_) => {
                if let Some(broken) = c.take() {
                    broken.abandon();
                }
                continue;
            }
        };
        let now = Instant::now();
        blocked_since.retain(|w, _| rows.iter().any(|(x, _, _)| x == w));
        let mut current = Vec::new();
        for (waiter, pid, desc) in &rows {
            blocked_since.entry(*waiter).or_insert(now);
            current.push(*pid);
            let desc = secrets::redact(desc);
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            s.blockers.entry(*pid).or_insert_with(|| desc.clone());
            if terminate
                && previous.contains(pid)
                && !s.terminated.iter().any(|t| t.starts_with(&format!("pid {pid} ")))
            {
                let ended = conn_
                    .scalar_with::<bool, _>("SELECT pg_catalog.pg_terminate_backend($1)", pid)
                    .unwrap_or(false);
                if ended {
                    super::say(&format!(
                        "guard: target {target}: terminated session {desc}: it blocked {step} (sessions = \"terminate\")"
                    ));
                    s.terminated.push(desc);
                }
            }
        }
        for (waiter, since) in &blocked_since {
            if now.duration_since(*since) > LOCK_WAIT + Duration::from_secs(5) {
                let _ = conn_.execute_with("SELECT pg_catalog.pg_cancel_backend($1)", *waiter);
                seen.lock().unwrap_or_else(|e| e.into_inner()).cancelled += 1;
            }
        }
        blocked_since.retain(|_, since| now.duration_since(*since) <= LOCK_WAIT + Duration::from_secs(5));
        previous = current;
    }
    // A session closes when dropped.
    drop(c);
}
