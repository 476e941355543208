//! Restore drills with the real binary.

use crate::common::*;

fn drill_env() -> Env {
    let env = lending_env("");
    let text = std::fs::read_to_string(env.path("guard.toml")).unwrap();
    env.write(
        "guard.toml",
        &format!(
            "{text}\n[drill]\nmax_age = \"2d\"\non_failure = \"env | grep ^GUARD_DRILL_ | sort > drill-failed.env\"\n\n[[drill.check]]\nname = \"payments restored\"\ntarget = \"app\"\nsql = \"SELECT count(*) FROM payment\"\nexpect = \"== 150\"\n\n[[drill.check]]\nname = \"rent history restored\"\ntarget = \"rent-history\"\nuntouched = [\"2025-01.json\"]\n"
        ),
    );
    env
}

fn scratch_is_empty(env: &Env) -> bool {
    match std::fs::read_dir(env.path("backups/tmp")) {
        Ok(mut d) => d.next().is_none(),
        Err(_) => true,
    }
}

#[test]
fn a_healthy_policy_drills_green_and_records_time_to_restore() {
    let env = drill_env();
    let id = env.guard(&["snapshot"]).stdout.trim().to_string();
    let r = env.guard(&["drill", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["snapshot_id"], id.as_str());
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert!(
            t["restore_seconds"].as_f64().unwrap() >= 0.0 && t["bytes"].as_u64().unwrap() > 0,
            "{t}"
        );
    }
    assert_eq!(v["checks"].as_array().unwrap().len(), 2);
    assert!(
        v["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true),
        "{v}"
    );
    assert!(scratch_is_empty(&env), "no scratch left behind");
    // Never touched the live data.
    assert_eq!(count(&db(&env), "SELECT count(*) FROM payment"), 150);

    let h = env.guard(&["drills", "--json"]);
    let hv: serde_json::Value = serde_json::from_str::<serde_json::Value>(&h.stdout).unwrap()["drills"].clone();
    assert_eq!(hv.as_array().unwrap().len(), 1);
    assert_eq!(hv[0]["ok"], true);
    let s = env.guard(&["status", "--json"]);
    let sv: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(sv["last_good_drill"]["snapshot_id"], id.as_str(), "{sv}");
    assert!(sv["warnings"].as_array().unwrap().is_empty(), "{sv}");
    let human = env.guard(&["drills"]);
    assert!(
        human.stdout.contains("passed") && human.stdout.contains("app"),
        "{human:?}"
    );
}

#[test]
fn flipped_truncated_and_missing_artifacts_fail_the_drill_naming_them() {
    for damage in ["flip", "truncate", "remove"] {
        let env = drill_env();
        let id = env.guard(&["snapshot"]).stdout.trim().to_string();
        let f = env.path(&format!("backups/snapshots/{id}/rent-history.tar.gz"));
        match damage {
            "flip" => {
                let mut b = std::fs::read(&f).unwrap();
                let n = b.len();
                b[n / 2] ^= 0x10;
                std::fs::write(&f, b).unwrap();
            }
            "truncate" => {
                let n = std::fs::metadata(&f).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(n - 7)
                    .unwrap();
            }
            _ => std::fs::remove_file(&f).unwrap(),
        }
        let r = env.guard(&["drill"]);
        assert_eq!(r.code, 66, "{damage}: {r:?}");
        assert!(
            r.all().contains("rent-history.tar.gz"),
            "{damage}: names the artifact: {r:?}"
        );
        assert!(
            scratch_is_empty(&env),
            "{damage}: no scratch left behind even when failing"
        );
        let facts = std::fs::read_to_string(env.path("drill-failed.env")).expect("on_failure ran");
        assert!(
            facts.contains("GUARD_DRILL_OK=0") && facts.contains(&format!("GUARD_DRILL_SNAPSHOT={id}")),
            "{facts}"
        );
        assert!(
            facts.contains("rent-history.tar.gz"),
            "the reason names the artifact: {facts}"
        );
        let s: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
        assert_eq!(s["last_drill"]["ok"], false);
        assert!(s["last_good_drill"].is_null());
    }
}

#[test]
fn a_failing_drill_check_fails_the_drill() {
    let env = drill_env();
    env.guard(&["snapshot"]);
    let text = std::fs::read_to_string(env.path("guard.toml"))
        .unwrap()
        .replace("== 150", "== 151");
    env.write("guard.toml", &text);
    let r = env.guard(&["drill", "--json"]);
    assert_eq!(r.code, 66, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["failure"].as_str().unwrap().contains("payments restored"), "{v}");
}

#[test]
fn status_warns_when_the_newest_restorable_snapshot_is_too_old() {
    let env = drill_env();
    let old = time::OffsetDateTime::now_utc() - time::Duration::days(5);
    let r: Run = env
        .cmd(&["snapshot"])
        .env("GUARD_TEST_NOW", guard::clock::rfc3339(old))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let s = env.guard(&["status"]);
    assert!(s.stdout.contains("WARNING") && s.stdout.contains("max_age"), "{s:?}");
    let v: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1, "{v}");
    env.guard(&["snapshot"]);
    let v: serde_json::Value = serde_json::from_str(&env.guard(&["status", "--json"]).stdout).unwrap();
    assert!(
        v["warnings"].as_array().unwrap().is_empty(),
        "a fresh snapshot clears it: {v}"
    );
}

#[test]
fn schedule_prints_and_installs_a_timer() {
    let env = drill_env();
    let r = env.guard(&["schedule", "--every", "daily", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["timer"].as_str().unwrap().contains("OnCalendar=daily"));
    assert!(v["service"].as_str().unwrap().contains(" drill") && v["service"].as_str().unwrap().contains(" prune"));
    assert!(v["crontab"].as_str().unwrap().starts_with("17 3 * * *"));
    let units = env.path("units");
    let r = env.guard(&[
        "schedule",
        "--every",
        "weekly",
        "--install",
        "--no-enable",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let timer = std::fs::read_to_string(units.join("guard-lending.timer")).unwrap();
    assert!(timer.contains("OnCalendar=weekly"), "{timer}");
    assert!(units.join("guard-lending.service").exists());
    let r = env.guard(&["schedule", "--every", "fortnightly"]);
    assert_eq!(r.code, 64);
}
