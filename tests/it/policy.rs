//! The policy loader through the real binary: what it refuses before anything runs (a target
//! overlapping the store, expectations that look like comparisons), which `${VAR}`s a command
//! needs, `.env`, shell expansions in hooks, and masking.

use std::path::Path;

use crate::common::pg::Cluster;
use crate::common::*;

/// Every file under `dir` with its content, for "touched nothing" comparisons.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            } else {
                out.push((p.display().to_string(), Vec::new()));
            }
        }
    }
    out.sort();
    out
}

/// An env holding `data/f1.txt`, `app.db` and a policy with `body` after `name`.
fn overlap_env(body: &str) -> Env {
    let env = Env::new();
    env.write("data/f1.txt", "hello\n");
    lending_db(&env.path("app.db"), 5);
    env.write("guard.toml", &format!("name = \"ov\"\n{body}"));
    env
}

/// R1: a target that is the store or lies in it (also through a symlink, an item of a dir
/// target's `paths`, or a SQLite file's `-wal` sibling), or a SQLite file beside which the
/// store is, is refused when the policy loads: exit 64, both paths named, nothing run or
/// written. A `dir` target may hold the store (issue 21: it leaves the store out and restores
/// in place): the store inside it, `.`, the policy's directory as an absolute path and a
/// symlink to a directory holding the store are accepted.
#[test]
fn a_target_overlapping_the_store_is_refused_at_load() {
    let abs_dir_target = |env: &Env| {
        format!(
            "[[target]]\nname = \"here\"\nkind = \"dir\"\npath = \"{}\"\n",
            env.dir.path().display()
        )
    };
    type Case = (&'static str, Box<dyn Fn(&Env) -> String>);
    let refused: Vec<Case> = vec![
        (
            "dir target = store",
            Box::new(|_| "[[target]]\nname = \"b\"\nkind = \"dir\"\npath = \"backups\"\n".into()),
        ),
        (
            "dir target inside the store",
            Box::new(|_| "[[target]]\nname = \"b\"\nkind = \"dir\"\npath = \"backups/snapshots\"\n".into()),
        ),
        (
            "an item of `paths` inside the store",
            Box::new(|_| {
                "[[target]]\nname = \"b\"\nkind = \"dir\"\npaths = [\"data\", \"backups/snapshots\"]\n".into()
            }),
        ),
        (
            "a sqlite file inside the store",
            Box::new(|_| {
                "store = \"data\"\n[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"data/app.db\"\n".into()
            }),
        ),
        (
            "the store is the sqlite file's -wal",
            Box::new(|_| {
                "store = \"app.db-wal\"\n[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"app.db\"\n".into()
            }),
        ),
        (
            "inside the store through a symlink",
            Box::new(|_| "store = \"data\"\n[[target]]\nname = \"l\"\nkind = \"dir\"\npath = \"link/sub\"\n".into()),
        ),
    ];
    for (what, body) in &refused {
        let env = overlap_env("");
        std::os::unix::fs::symlink(env.path("data"), env.path("link")).unwrap();
        env.write("data/sub/f2.txt", "two\n");
        env.write("guard.toml", &format!("name = \"ov\"\n{}", body(&env)));
        let before = tree(env.dir.path());
        for args in [
            &["--yes", "--", "touch", "ran"][..],
            &["snapshot"][..],
            &["--dry-run", "--", "touch", "ran"][..],
        ] {
            let r = env.guard(args);
            assert_eq!(r.code, 64, "{what}: {args:?}: {r:?}");
            assert!(r.stderr.contains("guard.toml:"), "{what}: {r:?}");
            assert!(r.stderr.contains("store"), "{what}: {r:?}");
            assert!(r.stderr.contains("Move the store"), "{what}: says the fix: {r:?}");
        }
        assert!(!env.path("ran").exists(), "{what}: the command ran");
        assert_eq!(tree(env.dir.path()), before, "{what}: something was written");
    }
    // The paths are named as given and canonical.
    let env = overlap_env("store = \"data\"\n[[target]]\nname = \"l\"\nkind = \"dir\"\npath = \"link/sub\"\n");
    std::os::unix::fs::symlink(env.path("data"), env.path("link")).unwrap();
    env.write("data/sub/f2.txt", "two\n");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 64, "{r:?}");
    let data = std::fs::canonicalize(env.path("data")).unwrap();
    assert!(r.stderr.contains(&format!("{}", data.join("sub").display())), "{r:?}");
    assert!(r.stderr.contains("link/sub"), "{r:?}");
    assert!(r.stderr.contains("lies inside the store"), "{r:?}");
    // A dir target holding the store, and a store beside the target, are fine.
    let accepted: Vec<Case> = vec![
        (
            "store inside the dir target",
            Box::new(|_| {
                "store = \"data/backups\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n".into()
            }),
        ),
        ("the policy's directory, absolute", Box::new(abs_dir_target)),
        (
            "the policy's directory as .",
            Box::new(|_| "[[target]]\nname = \"here\"\nkind = \"dir\"\npath = \".\"\n".into()),
        ),
        (
            "a symlink to a directory holding the store",
            Box::new(|_| {
                "store = \"data/backups\"\n[[target]]\nname = \"l\"\nkind = \"dir\"\npath = \"link\"\n".into()
            }),
        ),
        (
            "a store beside the target",
            Box::new(|_| "store = \"snaps\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n".into()),
        ),
    ];
    for (what, body) in &accepted {
        let env = overlap_env("");
        std::os::unix::fs::symlink(env.path("data"), env.path("link")).unwrap();
        env.write("guard.toml", &format!("name = \"ov\"\n{}", body(&env)));
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{what}: {r:?}");
        let r = env.guard(&["verify", r.stdout.trim()]);
        assert_eq!(r.code, 0, "{what}: {r:?}");
    }
}

/// Two targets reading and replacing the same local path (the same SQLite file spelled two
/// ways, a SQLite file or a directory inside a `dir` target's tree) are refused when the policy
/// loads: exit 64, both targets and paths named, the fix said, nothing run or written. Before,
/// both were snapshotted and restored, one over the other: the tree's exchange moved the SQLite
/// target's failed state away with it, and its rescue recorded the file "absent". A `dir`
/// target whose `exclude` leaves the other target's paths out is accepted, and a failed run
/// puts both back (compared with `sqlite3 .dump` and the tree's files).
#[test]
fn targets_that_overlap_each_other_are_refused_at_load() {
    let db = |name: &str, path: &str| format!("[[target]]\nname = \"{name}\"\nkind = \"sqlite\"\npath = \"{path}\"\n");
    let dir = |name: &str, path: &str, extra: &str| {
        format!("[[target]]\nname = \"{name}\"\nkind = \"dir\"\npath = \"{path}\"\n{extra}")
    };
    let refused: Vec<(&str, String, &[&str])> = vec![
        (
            "the same SQLite file spelled two ways",
            db("a", "data/app.db") + &db("b", "data/../data/app.db"),
            &["target \"b\"", "target \"a\"", "data/../data/app.db"],
        ),
        (
            "a SQLite file inside a dir target",
            dir("tree", "data", "") + &db("a", "data/app.db"),
            &["target \"a\"", "target \"tree\"", "exclude = [\"app.db*\"]"],
        ),
        (
            "a dir target holding a SQLite target named before it",
            db("a", "data/app.db") + &dir("tree", ".", ""),
            &["target \"tree\"", "target \"a\"", "exclude = [\"data/app.db*\"]"],
        ),
        (
            "an exclude that leaves out the file but not its -wal",
            dir("tree", "data", "exclude = [\"app.db\"]\n") + &db("a", "data/app.db"),
            &["target \"a\"", "app.db-wal"],
        ),
        (
            "a dir target inside another",
            dir("tree", "data", "") + &dir("sub", "data/sub", ""),
            &["target \"sub\"", "target \"tree\"", "exclude = [\"sub/\"]"],
        ),
    ];
    for (what, body, says) in &refused {
        let env = overlap_env("");
        lending_db(&env.path("data/app.db"), 5);
        env.write("data/sub/f2.txt", "two\n");
        env.write("guard.toml", &format!("name = \"ov\"\n{body}"));
        let before = tree(env.dir.path());
        for args in [&["--yes", "--", "touch", "ran"][..], &["snapshot"][..]] {
            let r = env.guard(args);
            assert_eq!(r.code, 64, "{what}: {args:?}: {r:?}");
            assert!(
                r.stderr.contains("guard.toml:"),
                "{what}: names the file and line: {r:?}"
            );
            for s in *says {
                assert!(r.stderr.contains(s), "{what}: says {s:?}: {r:?}");
            }
        }
        assert!(!env.path("ran").exists(), "{what}: the command ran");
        assert_eq!(tree(env.dir.path()), before, "{what}: something was written");
    }

    // Left out of the tree by `exclude`, the SQLite file is its own target's alone: a failed
    // run restores both, each from its own snapshot.
    let env = overlap_env("");
    lending_db(&env.path("data/app.db"), 5);
    env.write(
        "guard.toml",
        &format!(
            "name = \"ov\"\n{}{}",
            dir("tree", "data", "exclude = [\"app.db*\"]\n"),
            db("a", "data/app.db")
        ),
    );
    let db_before = dump(&env.path("data/app.db"));
    // The tree's own files (app.db is the SQLite target's, compared by its dump).
    let files = |env: &Env| {
        let mut t = crate::files::tree(&env.path("data"));
        t.retain(|k, _| !k.starts_with("app.db"));
        t
    };
    let files_before = files(&env);
    assert!(files_before.contains_key("f1.txt"), "{files_before:?}");
    let r = env.guard(&[
        "--yes",
        "--",
        "sh",
        "-c",
        "sqlite3 data/app.db 'DELETE FROM user' && echo changed > data/f1.txt && exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(dump(&env.path("data/app.db")), db_before, "{r:?}");
    assert_eq!(files(&env), files_before, "{r:?}");
    assert!(
        !r.stderr.contains("absent"),
        "each rescue holds its own target's failed state: {r:?}"
    );
}

/// F4: `expect` strings that look like comparisons but are not are refused at load with a
/// suggestion; `{ text = "…" }` is the literal form.
#[test]
fn expectations_that_look_like_comparisons_are_refused() {
    let env = simple_env("");
    let check = |expect: &str| {
        format!(
            "name = \"simple\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n\n[[check]]\nname = \"c\"\ntarget = \"app\"\nsql = \"SELECT count(*) FROM user\"\nexpect = {expect}\n"
        )
    };
    for (expect, hint) in [
        ("\"= 6\"", "did you mean `== 6`?"),
        ("\"=> 3\"", "did you mean `>= 3`?"),
        ("\"=< 3\"", "did you mean `<= 3`?"),
        ("\"==6 rows\"", "did you mean `== 6`?"),
        ("\"=== 6\"", "did you mean `== 6`?"),
        ("\"!6\"", "did you mean `!= 6`?"),
        ("\"<> 6\"", "did you mean `!= 6`?"),
        ("\"=<\"", "needs a number"),
    ] {
        env.write("guard.toml", &check(expect));
        let r = env.guard(&["--yes", "--", "touch", "ran"]);
        assert_eq!(r.code, 64, "{expect}: {r:?}");
        assert!(r.stderr.contains("guard.toml:11:"), "{expect}: {r:?}");
        assert!(r.stderr.contains(hint), "{expect}: {r:?}");
        assert!(!env.path("ran").exists());
    }
    // A literal that starts like a comparison, in the explicit form: it is compared as text.
    env.write(
        "guard.toml",
        "name = \"simple\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n\n[[check]]\nname = \"c\"\ntarget = \"app\"\nsql = \"SELECT '= 6'\"\nexpect = { text = \"= 6\" }\n",
    );
    let r = env.guard(&["--yes", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    // A plain literal still works, and a comparison of course.
    env.write("guard.toml", &check("\"10\""));
    assert_eq!(env.guard(&["--yes", "--", "true"]).code, 0);
    env.write("guard.toml", &check("\"== 10\""));
    assert_eq!(env.guard(&["--yes", "--", "true"]).code, 0);
}

/// A guard command with nothing from the environment but `vars`.
fn guard_env(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = env.cmd(args);
    c.env_clear();
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap().into()
}

/// F7: commands that never open a target work without the target's variables; those that do
/// name the variable, the target and the line.
#[test]
fn commands_that_open_no_target_need_no_target_variables() {
    let env = Env::new();
    lending_db(&env.path("app.db"), 5);
    env.write("data/f.txt", "x\n");
    env.write(
        "guard.toml",
        "name = \"lazy\"\nstore = \"backups\"\n\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"${GUARD_IT_APP_DB}\"\n\n[[target]]\nname = \"files\"\nkind = \"dir\"\npath = \"data\"\n\n[hooks]\nafter = [\"echo ${GUARD_IT_HOOK_VAR}\"]\n",
    );
    let db = env.path("app.db").display().to_string();
    let all = [("GUARD_IT_APP_DB", db.as_str()), ("GUARD_IT_HOOK_VAR", "h")];
    let r = guard_env(&env, &all, &["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    for args in [
        &["list"][..],
        &["show", &id][..],
        &["status"][..],
        &["drills"][..],
        &["prune", "--dry-run"][..],
        &["prune"][..],
        &["pin", &id, "--reason", "keep"][..],
        &["unpin", &id][..],
        &["verify", "--quick", &id][..],
    ] {
        let r = guard_env(&env, &[], args);
        assert_eq!(r.code, 0, "{args:?} needs no target variable: {r:?}");
    }
    for args in [
        &["snapshot"][..],
        &["--yes", "--", "touch", "ran"][..],
        &["--dry-run", "--", "true"][..],
        &["restore", &id, "--yes"][..],
        &["drill", &id][..],
        &["verify", &id][..],
    ] {
        let r = guard_env(&env, &[("GUARD_IT_HOOK_VAR", "h")], args);
        assert_eq!(r.code, 64, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("GUARD_IT_APP_DB")
                && r.stderr.contains("target \"app\"")
                && r.stderr.contains("guard.toml:7"),
            "{args:?}: {r:?}"
        );
        let r = guard_env(&env, &[("GUARD_IT_APP_DB", db.as_str())], args);
        assert_eq!(r.code, 64, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("GUARD_IT_HOOK_VAR") && r.stderr.contains("guard.toml:15"),
            "{args:?}: {r:?}"
        );
    }
    assert!(!env.path("ran").exists());
    // The drill refused above is not a failed drill of the snapshot.
    let r = guard_env(&env, &[], &["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(snapshots(&env).len(), 1);
}

/// R24: `\u0024{VAR}` and a `${…}` split over a line continuation are checked like `${VAR}`.
#[test]
fn escaped_and_continued_variables_are_checked_like_plain_ones() {
    let env = simple_env("");
    for (path, line) in [
        ("\"\\u0024{GUARD_IT_UNSET_R24}app.db\"", 6),
        ("\"\"\"${GUARD_IT_\\\n    UNSET_R24}app.db\"\"\"", 6),
    ] {
        env.write(
            "guard.toml",
            &format!("name = \"simple\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = {path}\n"),
        );
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 64, "{path}: {r:?}");
        assert!(
            r.stderr.contains("GUARD_IT_UNSET_R24") && r.stderr.contains(&format!("guard.toml:{line}")),
            "{path}: {r:?}"
        );
        assert!(!env.path("backups").exists(), "{path}: snapshotted app.db");
    }
}

/// F9: in hooks and `command` checks only `${NAME}` is guard's; other shell expansions reach
/// the shell untouched, and `$${` is a literal `${`.
#[test]
fn shell_expansions_in_hooks_and_command_checks_reach_the_shell() {
    let env = simple_env("");
    env.write(
        "guard.toml",
        r#"name = "simple"
store = "backups"
[[target]]
name = "app"
kind = "sqlite"
path = "app.db"

[hooks]
before = [
  "echo ${GUARD_IT_UNSET_F9:-dflt} > hook.txt",
  "echo ${GUARD_IT_SET_F9%%-*} >> hook.txt",
  "X=inner; echo $${X} >> hook.txt",
  "echo $(echo sub) $GUARD_IT_SET_F9 >> hook.txt",
]

[[check]]
name = "shell"
command = "test ${GUARD_IT_SET_F9#keep-} = drop && test -z \"${GUARD_IT_UNSET_F9:+x}\""
"#,
    );
    let mut c = env.cmd(&["--yes", "--", "true"]);
    c.env("GUARD_IT_SET_F9", "keep-drop").env_remove("GUARD_IT_UNSET_F9");
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(env.path("hook.txt")).unwrap(),
        "dflt\nkeep\ninner\nsub keep-drop\n"
    );
    // A plain `${NAME}` in a hook is still guard's: it must be set.
    env.write(
        "guard.toml",
        "name = \"simple\"\nstore = \"backups\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n[hooks]\nbefore = [\"echo ${GUARD_IT_UNSET_F9}\"]\n",
    );
    let r = env.guard(&["--yes", "--", "touch", "ran"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr.contains("GUARD_IT_UNSET_F9") && r.stderr.contains("guard.toml:8"),
        "{r:?}"
    );
    assert!(!env.path("ran").exists());
}

/// F8 and R22: a Prisma URL (`?schema=public`) read from `.env` (quotes, `&`), the real
/// environment winning; a short `password=` query parameter is masked everywhere.
#[test]
fn prisma_urls_from_dotenv_work_and_short_query_passwords_are_masked() {
    let pw = "q7";
    let cluster = Cluster::start_with_password(pw);
    cluster.createdb("rent");
    cluster.psql(
        "rent",
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 20) g;",
    );
    let env = Env::new();
    let url = format!(
        "postgres://postgres@/rent?host={}&port={}&password={pw}&schema=public",
        cluster.sock().display(),
        cluster.port
    );
    env.write(
        ".env",
        &format!("# Prisma's .env\nexport OTHER=1\nDATABASE_URL=\"{url}\"\nGUARD_IT_CHECK='SELECT count(*) FROM t'\n"),
    );
    env.write(
        "guard.toml",
        "name = \"prisma\"\nstore = \"backups\"\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"${DATABASE_URL}\"\n[[check]]\nname = \"rows\"\ntarget = \"rent\"\nsql = \"${GUARD_IT_CHECK}\"\nexpect = \"unchanged\"\n",
    );
    let run = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env_remove("DATABASE_URL")
            .env_remove("PGPASSWORD")
            .env("GUARD_TEST_PG_BIN", cluster.bin.as_os_str());
        let r: Run = c.output().unwrap().into();
        r
    };
    let mut outputs = Vec::new();
    let r = run(&["--yes", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    outputs.push(r.all());
    let r = run(&["--dry-run", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.all().contains("password=***"), "{r:?}");
    outputs.push(r.all());
    for s in snapshots(&env) {
        outputs.push(run(&["show", s["id"].as_str().unwrap()]).all());
    }
    outputs.push(run(&["list", "--json"]).all());
    for (i, o) in outputs.iter().enumerate() {
        assert!(!o.contains(&format!("password={pw}")), "output {i}: {o}");
    }
    let mut stack = vec![env.path("backups")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let b = std::fs::read(&p).unwrap();
                let needle = format!("password={pw}");
                assert!(
                    !b.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{}",
                    p.display()
                );
            }
        }
    }
    // The real environment wins over .env: a wrong URL there is the one used.
    let mut c = env.cmd(&["--yes", "--", "touch", "ran"]);
    c.env(
        "DATABASE_URL",
        "postgres://postgres@/nosuchdb?host=/nonexistent-guard-sock",
    );
    let r: Run = c.output().unwrap().into();
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.all().contains("nonexistent-guard-sock") || r.all().contains("nosuchdb"),
        "{r:?}"
    );
    assert!(!env.path("ran").exists());
}
