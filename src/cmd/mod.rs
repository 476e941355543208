//! The subcommands, one file each: options → domain call → human text or `--json`.
//!
//! [`dispatch`] picks the file; [`Session`] is the preamble they share (the policy's store and
//! catalog, the lock); [`for_policies`] runs one for every policy with `--all`.

pub mod check;
pub mod completions;
pub mod drill;
pub mod drills;
pub mod init;
pub mod key;
pub mod list;
pub mod pin;
pub mod prune;
pub mod recover;
pub mod reindex;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod schema;
pub mod show;
pub mod snapshot;
pub mod status;
pub mod verify;

use crate::catalog::Catalog;
use crate::cli::{Cli, KeyAction, Sub};
use crate::error::{Failure, Kind, ResultExt};
use crate::lock::Lock;
use crate::manifest::SnapshotKind;
use crate::policy::{self, Policy};
use crate::process::ShellHooks;
use crate::restore::Ctx;
use crate::store::{self, Store};
use crate::ui::Ui;

/// A policy's store and catalog, opened.
pub struct Session {
    pub store: Box<dyn Store>,
    pub catalog: Catalog,
}

/// The policy's store, opened. A remote store that does not answer (or refuses us) is
/// unavailable (exit 69, as a store that cannot be written); a local one that cannot be opened
/// is a bad `store` setting (64).
fn open_store(policy: &Policy) -> Result<Box<dyn Store>, Failure> {
    let kind = match policy.store {
        store::StoreSpec::S3 { .. } => Kind::Snapshot,
        store::StoreSpec::Local(_) => Kind::Usage,
    };
    store::open(&policy.store).kind(kind)
}

impl Session {
    /// Open the policy's store and its catalog (brought up to date with the store).
    pub fn open(policy: &Policy) -> Result<Session, Failure> {
        // The policy's store key signs and checks manifests and journals from here on (with
        // `--all`, each policy's session uses its own).
        crate::auth::configure(policy.store_key_file.as_deref())?;
        crate::crypt::configure(policy.encryption.as_ref())?;
        let store = open_store(policy)?;
        let catalog = Catalog::open(store.as_ref())?;
        Ok(Session { store, catalog })
    }

    /// Like [`Session::open`], but a catalog that cannot be written (a full disk, a read-only
    /// store) is read as last indexed, with a warning, instead of failing: for `guard status`.
    pub fn open_read_only(policy: &Policy, ui: &Ui) -> Result<Session, Failure> {
        crate::auth::configure(policy.store_key_file.as_deref())?;
        crate::crypt::configure(policy.encryption.as_ref())?;
        let store = open_store(policy)?;
        let catalog = Catalog::open_or_read_only(store.as_ref(), ui)?;
        Ok(Session { store, catalog })
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Take the policy's lock for `what` (shown to a second guard), saying so when it was taken
    /// over from a guard that died.
    pub fn lock(&self, policy: &Policy, what: &str, run_id: Option<&str>, ui: &Ui) -> Result<Lock, Failure> {
        let lock = crate::lock::acquire_waiting(self.store(), &policy.name, what, run_id, ui.lock_wait, |who| {
            ui.info(&format!("guard: {who}; waiting for it (--wait)"))
        })?;
        if let Some(h) = &lock.taken_over {
            ui.warn(&format!(
                "took over the lock of a guard that died ({h}); `guard status` shows what it left behind"
            ));
        }
        Ok(lock)
    }

    /// What the domain needs to restore: this session with the policy's shell hooks.
    pub fn ctx<'a>(&'a self, policy: &'a Policy, ui: &'a Ui) -> Ctx<'a> {
        Ctx {
            policy,
            store: self.store(),
            catalog: &self.catalog,
            hooks: &ShellHooks,
            ui,
        }
    }

    /// Resolve `latest`, a full id or a unique prefix to a snapshot id of the policy.
    /// A damaged snapshot (its manifest cannot be read) is refused by name, exit 65.
    pub fn resolve(&self, policy: &Policy, id: &str) -> Result<String, Failure> {
        resolve_id(&self.catalog, policy, id).map_err(|e| {
            if id == "latest" {
                return e;
            }
            match crate::damaged::named(self.store(), &self.catalog, &policy.name, id) {
                Some(d) => Failure::msg(Kind::Corrupt, d.line()),
                None => e,
            }
        })
    }
}

/// Resolve `latest`, a full id or a unique prefix to a snapshot id of the policy.
pub fn resolve_id(catalog: &Catalog, policy: &Policy, id: &str) -> Result<String, Failure> {
    let snaps = catalog.snapshots(Some(&policy.name))?;
    if id == "latest" {
        return snaps
            .iter()
            .find(|s| s.kind != SnapshotKind::Rescue.as_str())
            .or(snaps.first())
            .map(|s| s.id.clone())
            .ok_or_else(|| Failure::msg(Kind::Usage, format!("policy {} has no snapshot yet", policy.name)));
    }
    let matches: Vec<&str> = snaps
        .iter()
        .filter(|s| s.id.starts_with(id))
        .map(|s| s.id.as_str())
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Failure::msg(
            Kind::Usage,
            format!(
                "no complete snapshot {id:?} of policy {} (see `guard list`)",
                policy.name
            ),
        )),
        many => Err(Failure::msg(
            Kind::Usage,
            format!("{id:?} matches {} snapshots; give more of the id", many.len()),
        )),
    }
}

/// Run the parsed command line; returns the process exit code.
pub fn execute(cli: Cli) -> u8 {
    crate::process::private_umask();
    crate::auth::set_trust_unsigned(cli.trust_unsigned);
    let mut ui = crate::ui::Ui::new(cli.json);
    ui.verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => crate::ui::Verbosity::Quiet,
        (_, true) => crate::ui::Verbosity::Verbose,
        _ => crate::ui::Verbosity::Normal,
    };
    ui.lock_wait = cli.wait;
    crate::progress::enable(ui.wants_progress());
    let opened = match &cli.log_file {
        Some(p) => crate::ui::open_log_file(p)
            .map_err(|e| Failure::msg(Kind::Usage, format!("--log-file {}: {e}", p.display()))),
        None => Ok(()),
    };
    match opened.and_then(|()| dispatch(cli, &ui)) {
        Ok(code) => code,
        Err(f) => {
            let msg = crate::secrets::redact(&format!("{:#}", f.error));
            if ui.json && !f.reported {
                crate::ui::print_json(
                    &serde_json::json!({"error": msg, "kind": f.kind.as_str(), "exit_code": f.kind.exit_code()}),
                );
            }
            crate::errln!("{} {msg}", crate::ui::paint(crate::ui::color::FAIL, "guard: error:"));
            f.kind.exit_code()
        }
    }
}

/// Run the parsed command line.
pub fn dispatch(cli: Cli, ui: &Ui) -> Result<u8, Failure> {
    if cli.sub.is_some() && (!cli.command.is_empty() || cli.dry_run || cli.no_restore) {
        return Err(Failure::msg(
            Kind::Usage,
            "`-- COMMAND`, --dry-run and --no-restore belong to the guarded run, not to a subcommand",
        ));
    }
    let arg = cli.policy.as_deref();
    if let Some(done) = without_policy(&cli, arg, ui) {
        return done;
    }
    let policy = policy::load(&policy::locate(arg).kind(Kind::Usage)?).kind(Kind::Usage)?;
    let policy = &policy;
    said_policy(policy, ui);
    // Commands that open a target need every variable the policy uses; the others (list,
    // show, status, drills, pin, verify --quick, schedule, reindex) need none of the targets'.
    let opens_targets = match &cli.sub {
        None | Some(Sub::Snapshot { .. }) | Some(Sub::Restore { .. }) => true,
        Some(Sub::Recover { keep, .. }) => !keep,
        Some(Sub::Verify { quick, .. }) => !quick,
        _ => false,
    };
    if opens_targets {
        policy.require_env().kind(Kind::Usage)?;
    }
    match cli.sub {
        None => run::run(
            policy,
            &crate::run::Options {
                yes: cli.yes,
                dry_run: cli.dry_run,
                no_restore: cli.no_restore,
                command: cli.command,
            },
            ui,
        ),
        Some(Sub::Snapshot { target, label }) => snapshot::snapshot(policy, &target, label, ui),
        Some(Sub::Check) => check::check(policy, ui),
        Some(Sub::List) => list::list(policy, ui),
        Some(Sub::Show { id }) => show::show(policy, &id, ui),
        Some(Sub::Verify { id, quick }) => verify::verify(policy, id.as_deref(), quick, ui),
        Some(Sub::Restore {
            id,
            target,
            no_rescue,
            terminate_sessions,
        }) => restore::restore(
            &sessions_override(policy, terminate_sessions),
            &id,
            &target,
            no_rescue,
            cli.yes,
            ui,
        ),
        Some(Sub::Status) => status::status(policy, ui),
        Some(Sub::Recover {
            keep,
            terminate_sessions,
        }) => recover::recover(&sessions_override(policy, terminate_sessions), keep, cli.yes, ui),
        Some(Sub::Reindex) => reindex::reindex(policy, ui),
        Some(Sub::Prune { .. })
        | Some(Sub::Drill { .. })
        | Some(Sub::Completions { .. })
        | Some(Sub::Man)
        | Some(Sub::Schema)
        | Some(Sub::Init { .. }) => {
            unreachable!("handled above")
        }
        Some(Sub::Drills) => drills::drills(policy, ui),
        Some(Sub::Schedule {
            every,
            install,
            unit_dir,
            no_enable,
            env_file,
            snapshot,
        }) => schedule::schedule(
            policy,
            &schedule::Options {
                every: &every,
                env_file: env_file.as_deref(),
                snapshot,
            },
            install,
            &unit_dir,
            no_enable,
            ui,
        ),
        Some(Sub::Pin { id, reason }) => pin::pin(policy, &id, Some(&reason), false, ui),
        Some(Sub::Unpin { id }) => pin::pin(policy, &id, None, true, ui),
        Some(Sub::Key {
            action: KeyAction::Generate { .. },
        }) => key::generate_for(policy, ui),
    }
}

/// The subcommands that need no policy, or run over one or every policy themselves (`None`:
/// the command line names one that loads the policy first).
fn without_policy(cli: &Cli, arg: Option<&str>, ui: &Ui) -> Option<Result<u8, Failure>> {
    Some(match &cli.sub {
        // Generated from the command line's definition: no policy needed.
        Some(Sub::Completions { shell }) => completions::completions(*shell),
        Some(Sub::Man) => completions::man(),
        Some(Sub::Schema) => schema::schema(),
        Some(Sub::Init { file }) => init::init(Some(file), ui),
        Some(Sub::Prune {
            all,
            keep_within,
            keep_last,
            dry_run,
        }) => for_policies(*all, arg, ui, |p| {
            // Releasing what a pruned snapshot owns outside the store opens its target.
            if !*dry_run && p.targets.iter().any(|t| t.kind.caps().owns_external) {
                p.require_env().kind(Kind::Usage)?;
            }
            prune::prune(p, *keep_within, *keep_last, *dry_run, ui)
        }),
        Some(Sub::Drill { all, id }) => for_policies(*all, arg, ui, |p| {
            p.require_env().kind(Kind::Usage)?;
            drill::drill(p, id.as_deref(), ui)
        }),
        Some(Sub::Key {
            action: KeyAction::Generate { file: Some(file) },
        }) => key::generate(file, ui),
        _ => return None,
    })
}

/// `-v`: which policy file and store this command uses.
fn said_policy(policy: &Policy, ui: &Ui) {
    ui.detail(&format!(
        "guard: policy {} from {}, store {}",
        policy.name,
        std::fs::canonicalize(&policy.file)
            .unwrap_or_else(|_| policy.file.clone())
            .display(),
        policy.store
    ));
}

/// The policy with `sessions = "terminate"` on every PostgreSQL target when `terminate` (the
/// one-off `--terminate-sessions` of `guard restore` and `guard recover`).
fn sessions_override(policy: &Policy, terminate: bool) -> Policy {
    let mut p = policy.clone();
    if terminate {
        for t in &mut p.targets {
            if let crate::targets::KindSpec::Postgres(pg) = &mut t.kind {
                pg.sessions = crate::targets::postgres::Sessions::Terminate;
            }
        }
    }
    p
}

/// Every policy file in `./policies/`, for `--all`.
fn all_policies() -> Result<Vec<Policy>, Failure> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("policies")
        .map_err(|e| Failure::msg(Kind::Usage, format!("--all reads ./policies/: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("toml"))
        .collect();
    files.sort();
    files.iter().map(|f| policy::load(f).kind(Kind::Usage)).collect()
}

/// Run `f` for one policy or, with `--all`, for each; the worst exit code wins. With `--json`
/// and `--all`, one document: `{"policies": [...]}`, each policy's document (or its error).
pub fn for_policies(
    all: bool,
    arg: Option<&str>,
    ui: &Ui,
    mut f: impl FnMut(&Policy) -> Result<u8, Failure>,
) -> Result<u8, Failure> {
    if !all {
        let path = policy::locate(arg).kind(Kind::Usage)?;
        return f(&policy::load(&path).kind(Kind::Usage)?);
    }
    let policies = all_policies()?;
    let mut worst = 0;
    let mut first_err = None;
    let mut docs = Vec::new();
    for p in policies {
        let (r, mut printed) = crate::ui::collect_json(|| f(&p));
        match r {
            Ok(c) => worst = worst.max(c),
            Err(e) => {
                let msg = crate::secrets::redact(&format!("{:#}", e.error));
                crate::errln!("guard: policy {}: {msg}", p.name);
                if !e.reported {
                    printed.push(crate::ui::versioned(&serde_json::json!({
                        "policy": p.name, "error": msg, "kind": e.kind.as_str(), "exit_code": e.kind.exit_code(),
                    })));
                }
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
        docs.extend(printed);
    }
    if ui.json {
        crate::ui::print_json(&serde_json::json!({ "policies": docs }));
    }
    match first_err {
        Some(e) if ui.json => Err(e.reported()),
        Some(e) => Err(e),
        None => Ok(worst),
    }
}
