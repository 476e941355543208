//! `guard schedule --every daily [--install]`: systemd units (or a crontab line) that run drills
//! and retention for the policy.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::error::{Failure, Kind};
use crate::policy::Policy;
use crate::ui::{self, Ui};

/// What `schedule` prints or installs.
struct Units {
    /// `guard-<policy>`
    unit: String,
    service: String,
    timer: String,
    cron_line: String,
    /// The variables (`${NAME}`) the policy uses, for the environment file.
    needs: Vec<String>,
}

/// Options of `guard schedule` beyond where it installs.
pub struct Options<'a> {
    pub every: &'a str,
    /// The environment file the units and the crontab line load (`--env-file`; default
    /// `/etc/guard/POLICY.env`).
    pub env_file: Option<&'a Path>,
    /// Take a fresh `manual` snapshot before the drill (`--snapshot`).
    pub snapshot: bool,
}

/// `s` as one word for `sh` (and cron, whose `%` would start stdin: escaped as `\%`).
fn sh_word(s: &str) -> String {
    sh_quote(s).replace('%', "\\%")
}

/// `s` as one word for `sh` (quoted unless it is plain).
fn sh_quote(s: &str) -> String {
    if plain(s) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Needs no quoting anywhere: letters, digits and `_-./=:,@+`.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+".contains(c))
}

/// `s` as one word of a systemd `ExecStart=` line: double-quoted, `\` and `"` escaped, `$`
/// and `%` doubled (systemd expands `$VAR` and `%` specifiers there).
fn unit_word(s: &str) -> String {
    if plain(s) {
        return s.to_string();
    }
    let e = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "$$")
        .replace('%', "%%");
    format!("\"{e}\"")
}

/// Every `${NAME}` the policy file uses, found in its decoded strings (comments are not read).
pub fn needed_vars(policy: &Policy) -> Vec<String> {
    fn walk(v: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            toml::Value::String(s) => {
                for f in crate::vars::refs(s) {
                    if let crate::vars::Ref::Name(n) = f.r {
                        out.insert(n);
                    }
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            toml::Value::Table(t) => t.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    if let Some(v) = std::fs::read_to_string(&policy.file)
        .ok()
        .and_then(|t| t.parse::<toml::Value>().ok())
    {
        walk(&v, &mut out);
    }
    out.into_iter().collect()
}

fn units(policy: &Policy, calendar: &str, cron: &str, opts: &Options) -> Result<Units, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::new(Kind::Internal, e))?;
    let policy_file = std::fs::canonicalize(&policy.file).unwrap_or_else(|_| policy.file.clone());
    let (exe, pf) = (exe.display().to_string(), policy_file.display().to_string());
    let name = &policy.name;
    let env_file = opts
        .env_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new("/etc/guard").join(format!("{name}.env")));
    let env_file = env_file.display().to_string();
    let needs = needed_vars(policy);
    // Needed variables make the file required (a missing one fails loudly); otherwise it is
    // optional (AWS credentials for an S3 store, for example, may live there).
    let optional = if needs.is_empty() { "-" } else { "" };
    let steps: Vec<Vec<&str>> = if opts.snapshot {
        vec![vec!["snapshot", "--label", "scheduled drill"], vec!["drill"]]
    } else {
        vec![vec!["drill"]]
    };
    let unit_cmd = |args: &[&str]| {
        let mut w = vec![unit_word(&exe), "--policy".into(), unit_word(&pf)];
        w.extend(args.iter().map(|a| unit_word(a)));
        w.join(" ")
    };
    let cron_cmd = |args: &[&str]| {
        let mut w = vec![sh_word(&exe), "--policy".into(), sh_word(&pf)];
        w.extend(args.iter().map(|a| sh_word(a)));
        w.join(" ")
    };
    let mut service = format!(
        "[Unit]\nDescription=guard restore drill and retention for policy {name}\n\n[Service]\nType=oneshot\nEnvironmentFile={optional}{}\n",
        env_file.replace('%', "%%")
    );
    for s in &steps {
        service.push_str(&format!("ExecStart={}\n", unit_cmd(s)));
    }
    // Runs only when every ExecStart succeeded: a failed drill prunes nothing (cron alike).
    service.push_str(&format!("ExecStartPost={}\n", unit_cmd(&["prune"])));
    let mut chain: Vec<String> = steps.iter().map(|s| cron_cmd(s)).collect();
    chain.push(cron_cmd(&["prune"]));
    Ok(Units {
        unit: format!("guard-{name}"),
        service,
        timer: format!(
            "[Unit]\nDescription=guard drill + prune for policy {name}, {calendar}\n\n[Timer]\nOnCalendar={calendar}\nRandomizedDelaySec=15m\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n"
        ),
        cron_line: format!(
            "{cron} GUARD_ENV_FILE={} && export GUARD_ENV_FILE && {}",
            sh_word(&format!("{optional}{env_file}")),
            chain.join(" && ")
        ),
        needs,
    })
}

/// What the policy needs from the environment file, as comment lines.
fn needs_note(u: &Units, env_file: &str) -> String {
    if u.needs.is_empty() {
        return format!("# the policy uses no ${{VAR}}; {env_file} is read when it exists\n");
    }
    format!(
        "# the policy needs {}: put them in {env_file} (NAME=value lines, chmod 600); the job fails (exit 64) naming any that is missing\n",
        u.needs.join(", ")
    )
}

pub fn schedule(
    policy: &Policy,
    opts: &Options,
    install: bool,
    unit_dir: &Path,
    no_enable: bool,
    ui: &Ui,
) -> Result<u8, Failure> {
    let every = opts.every;
    let (calendar, cron) = match every {
        "hourly" => ("hourly", "0 * * * *"),
        "daily" => ("daily", "17 3 * * *"),
        "weekly" => ("weekly", "17 3 * * 1"),
        other => {
            return Err(Failure::msg(
                Kind::Usage,
                format!("--every {other:?}: use hourly, daily or weekly"),
            ))
        }
    };
    let u = units(policy, calendar, cron, opts)?;
    let env_file = u
        .service
        .lines()
        .find_map(|l| l.strip_prefix("EnvironmentFile="))
        .map(|l| l.trim_start_matches('-').replace("%%", "%"))
        .unwrap_or_default();
    let note = needs_note(&u, &env_file);
    let systemd = Path::new("/run/systemd/system").is_dir() || unit_dir != Path::new("/etc/systemd/system");
    if install {
        let files = if systemd {
            install_units(&u, unit_dir, no_enable, ui)?
        } else {
            install_cron_line(&u.cron_line, ui)?;
            Vec::new()
        };
        if ui.json {
            ui::print_json(&json!({
                "installed": if systemd { "systemd" } else { "crontab" },
                "unit": u.unit,
                "files": files,
                "enabled": systemd && !no_enable,
                "crontab": if systemd { None } else { Some(&u.cron_line) },
                "env_file": env_file,
                "needs": u.needs,
                "snapshot": opts.snapshot,
            }));
        }
        ui.info(note.trim_end());
    } else if ui.json {
        ui::print_json(&json!({
            "service": u.service,
            "timer": u.timer,
            "crontab": u.cron_line,
            "unit": u.unit,
            "env_file": env_file,
            "needs": u.needs,
            "snapshot": opts.snapshot,
        }));
    } else if systemd {
        let (dir, unit) = (unit_dir.display(), &u.unit);
        crate::outln!(
            "{note}# {dir}/{unit}.service\n{}\n# {dir}/{unit}.timer\n{}",
            u.service,
            u.timer
        );
        let pf = std::fs::canonicalize(&policy.file).unwrap_or_else(|_| policy.file.clone());
        crate::outln!(
            "# install: guard --policy {} schedule --every {every} --install",
            sh_quote(&pf.display().to_string())
        );
    } else {
        crate::outln!(
            "{note}# systemd is not running here; add this line with `crontab -e`:\n{}",
            u.cron_line
        );
    }
    Ok(0)
}

/// Write the service and timer into `unit_dir` and (unless `no_enable`) enable the timer.
/// Returns the files written.
fn install_units(u: &Units, unit_dir: &Path, no_enable: bool, ui: &Ui) -> Result<Vec<String>, Failure> {
    crate::store::local::create_dir_all_private(unit_dir).map_err(|e| Failure::new(Kind::Internal, e))?;
    let mut files = Vec::new();
    for (name, text) in [
        (format!("{}.service", u.unit), &u.service),
        (format!("{}.timer", u.unit), &u.timer),
    ] {
        let p = unit_dir.join(name);
        files.push(p.display().to_string());
        crate::store::local::write_atomic(&p, text.as_bytes())
            .map_err(|e| Failure::msg(Kind::Internal, format!("cannot write {}: {e}", p.display())))?;
        ui.info(&format!("wrote {}", p.display()));
    }
    if no_enable {
        return Ok(files);
    }
    for args in [
        vec!["daemon-reload"],
        vec!["enable", "--now", &format!("{}.timer", u.unit)],
    ] {
        let st = Command::new("systemctl")
            .args(&args)
            .status()
            .map_err(|e| Failure::msg(Kind::Internal, format!("systemctl: {e}")))?;
        if !st.success() {
            return Err(Failure::msg(
                Kind::Internal,
                format!("systemctl {} failed", args.join(" ")),
            ));
        }
    }
    ui.info(&format!("enabled {}.timer", u.unit));
    Ok(files)
}

/// Add `line` to the user's crontab unless it is there already.
fn install_cron_line(line: &str, ui: &Ui) -> Result<(), Failure> {
    let existing = Command::new("crontab")
        .arg("-l")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if existing.lines().any(|l| l == line) {
        ui.info("crontab already has the line");
        return Ok(());
    }
    let mut child = crate::process::user_umask(&mut Command::new("crontab"))
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::msg(Kind::Internal, format!("crontab: {e}")))?;
    let mut input = existing;
    if !input.is_empty() && !input.ends_with('\n') {
        input.push('\n');
    }
    input.push_str(line);
    input.push('\n');
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| Failure::new(Kind::Internal, e))?;
    if !child.wait().map_err(|e| Failure::new(Kind::Internal, e))?.success() {
        return Err(Failure::msg(Kind::Internal, "crontab - failed"));
    }
    ui.info("added the drill + prune line to the crontab");
    Ok(())
}
