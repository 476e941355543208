//! guard's integration tests, one binary (`cargo test --test it`): one module per area, each
//! running the real `guard` binary against real engines, and the harness (`common/`) compiled
//! and linked once. Run one area with a filter: `cargo test --test it postgres::`.

mod common;

mod checks;
mod cli;
mod cookbook;
mod deleted;
mod dir_hot;
mod docs;
mod drill;
mod faults;
mod files;
mod fuzz_parsers;
mod hooks;
mod init;
mod json;
mod leftovers;
mod lifecycle;
mod pg_clone;
mod pg_exact;
mod pg_hangs;
mod policy;
mod postgres;
mod preflight;
mod retention;
mod s3;
mod schedule;
mod security;
mod sessions;
mod snippets;
mod sqlite_lifecycle;
mod sticky;
mod ttr;
mod turso;
mod turso_clients;
