//! Who else holds a SQLite database: POSIX record locks read with `F_GETLK`, and hot journals.
//!
//! SQLite's unix VFS takes `fcntl` locks on fixed byte ranges: in the database file at
//! `PENDING_BYTE` (0x40000000) for PENDING, RESERVED and SHARED (512 bytes in all), and, in WAL
//! mode, on bytes 120..=128 of the `-shm` file (the WAL locks and the "DMS" slot that every open
//! connection holds). `F_GETLK` names the pid of a process whose lock conflicts with a write lock
//! on those ranges, without taking any lock.
//!
//! Caution (SQLite's "how to corrupt"): closing any descriptor of a file drops *every* POSIX lock
//! this process holds on it. These functions open and close the files, so they are only called
//! while guard itself has no SQLite connection to the database.

use std::fs;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::Path;

const PENDING_BYTE: i64 = 0x4000_0000;
/// PENDING, RESERVED and the 510-byte SHARED range.
const DB_LOCK_LEN: i64 = 512;
/// The WAL-index locks (8 slots from byte 120) and the DMS byte at 128.
const SHM_LOCK_START: i64 = 120;
const SHM_LOCK_LEN: i64 = 9;

/// The first 8 bytes of a rollback journal that holds a transaction (a zeroed header, as
/// `journal_mode=PERSIST` leaves it, is not hot).
const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// The pid of another process holding a lock that conflicts with a write lock on
/// `[start, start+len)` of `file`; `None` when nobody does (or the file does not exist).
fn holder(file: &Path, start: i64, len: i64) -> Option<i32> {
    let f = fs::File::open(file).ok()?;
    // SAFETY: a zeroed `flock` is a valid value; F_GETLK only reads and writes that struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start as _;
    fl.l_len = len as _;
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 || fl.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    Some(fl.l_pid)
}

/// Another process using the database `db` (a transaction or, in WAL mode, an open
/// connection): its pid and what it holds.
pub(super) fn user_of(db: &Path) -> Option<(i32, &'static str)> {
    if let Some(pid) = holder(db, PENDING_BYTE, DB_LOCK_LEN) {
        return Some((pid, "a lock on the database file (a transaction is open)"));
    }
    let shm = super::sidecars(db)[1].clone();
    holder(&shm, SHM_LOCK_START, SHM_LOCK_LEN).map(|pid| (pid, "the WAL index (an open connection)"))
}

/// Does `db` have a hot rollback journal: a transaction that did not finish, whose original
/// pages are in the `-journal` while the database file may hold uncommitted ones?
pub(super) fn hot_journal(db: &Path) -> bool {
    let j = &super::sidecars(db)[2];
    let mut head = [0u8; 8];
    match fs::File::open(j) {
        Ok(mut f) => f.read_exact(&mut head).is_ok() && head == JOURNAL_MAGIC,
        Err(_) => false,
    }
}

/// "pid 1234 (python3)" when the process's name can be read.
pub(super) fn describe(pid: i32) -> String {
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(c) if !c.trim().is_empty() => format!("pid {pid} ({})", c.trim()),
        _ => format!("pid {pid}"),
    }
}
