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
}

fn units(policy: &Policy, calendar: &str, cron: &str) -> Result<Units, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::new(Kind::Internal, e))?;
    let policy_file = std::fs::canonicalize(&policy.file).unwrap_or_else(|_| policy.file.clone());
    let exe = exe.display();
    let pf = policy_file.display();
    let name = &policy.name;
    Ok(Units {
        unit: format!("guard-{name}"),
        service: format!(
            "[Unit]\nDescription=guard restore drill and retention for policy {name}\n\n[Service]\nType=oneshot\nExecStart={exe} --policy {pf} drill\nExecStartPost={exe} --policy {pf} prune\n"
        ),
        timer: format!(
            "[Unit]\nDescription=guard drill + prune for policy {name}, {calendar}\n\n[Timer]\nOnCalendar={calendar}\nRandomizedDelaySec=15m\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n"
        ),
        cron_line: format!("{cron} {exe} --policy {pf} drill; {exe} --policy {pf} prune"),
    })
}

pub fn schedule(
    policy: &Policy,
    every: &str,
    install: bool,
    unit_dir: &Path,
    no_enable: bool,
    ui: &Ui,
) -> Result<u8, Failure> {
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
    let u = units(policy, calendar, cron)?;
    let systemd = Path::new("/run/systemd/system").is_dir() || unit_dir != Path::new("/etc/systemd/system");
    if install && systemd {
        install_units(&u, unit_dir, no_enable, ui)?;
    } else if install {
        install_cron_line(&u.cron_line, ui)?;
    } else if ui.json {
        ui::print_json(&json!({"service": u.service, "timer": u.timer, "crontab": u.cron_line, "unit": u.unit}));
    } else if systemd {
        let (dir, unit) = (unit_dir.display(), &u.unit);
        crate::outln!(
            "# {dir}/{unit}.service\n{}\n# {dir}/{unit}.timer\n{}",
            u.service,
            u.timer
        );
        let pf = std::fs::canonicalize(&policy.file).unwrap_or_else(|_| policy.file.clone());
        crate::outln!(
            "# install: guard --policy {} schedule --every {every} --install",
            pf.display()
        );
    } else {
        crate::outln!(
            "# systemd is not running here; add this line with `crontab -e`:\n{}",
            u.cron_line
        );
    }
    Ok(0)
}

/// Write the service and timer into `unit_dir` and (unless `no_enable`) enable the timer.
fn install_units(u: &Units, unit_dir: &Path, no_enable: bool, ui: &Ui) -> Result<(), Failure> {
    crate::store::local::create_dir_all_private(unit_dir).map_err(|e| Failure::new(Kind::Internal, e))?;
    for (name, text) in [
        (format!("{}.service", u.unit), &u.service),
        (format!("{}.timer", u.unit), &u.timer),
    ] {
        let p = unit_dir.join(name);
        crate::store::local::write_atomic(&p, text.as_bytes())
            .map_err(|e| Failure::msg(Kind::Internal, format!("cannot write {}: {e}", p.display())))?;
        ui.info(&format!("wrote {}", p.display()));
    }
    if no_enable {
        return Ok(());
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
    Ok(())
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
