//! Time and place: the clock every record is stamped with, and the host name.

use time::OffsetDateTime;

/// The current time.
///
/// `GUARD_TEST_NOW` (RFC 3339) overrides it, so the retention tests can age snapshots without
/// waiting; nothing else should set it.
pub fn now() -> OffsetDateTime {
    if let Ok(s) = std::env::var("GUARD_TEST_NOW") {
        if let Ok(t) = OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339) {
            return t;
        }
    }
    OffsetDateTime::now_utc()
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `t` in the machine's local time zone (the `TZ` variable, else /etc/localtime), to the second,
/// with its offset: `2026-12-01 21:14:03 +01:00`. What people read; JSON and every record keep
/// RFC 3339 UTC ([`rfc3339`]).
pub fn local(t: OffsetDateTime) -> String {
    let offset = local_offset(t.unix_timestamp()).unwrap_or(time::UtcOffset::UTC);
    let l = t.to_offset(offset);
    let (h, m, _) = offset.as_hms();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {}{:02}:{:02}",
        l.year(),
        u8::from(l.month()),
        l.day(),
        l.hour(),
        l.minute(),
        l.second(),
        if offset.is_negative() { '-' } else { '+' },
        h.unsigned_abs(),
        m.unsigned_abs()
    )
}

/// [`local`] of an RFC 3339 string as records hold them; anything else is shown as it is.
pub fn local_str(s: &str) -> String {
    match OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => local(t),
        Err(_) => s.to_string(),
    }
}

/// The local UTC offset at `unix` seconds, from the C library's `localtime_r` (which reads `TZ`
/// and the zone files; the `time` crate refuses to in a program with threads).
fn local_offset(unix: i64) -> Option<time::UtcOffset> {
    #[allow(clippy::useless_conversion)] // time_t is i64 here, narrower elsewhere
    let t: libc::time_t = unix.try_into().ok()?;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return None;
    }
    time::UtcOffset::from_whole_seconds(i32::try_from(tm.tm_gmtoff).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_is_to_the_second_with_its_offset() {
        let t = OffsetDateTime::parse(
            "2026-12-01T20:14:03.123456Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let s = local(t);
        // The shape whatever the zone this runs in: date, time to the second, offset.
        let re = s.as_bytes();
        assert_eq!(s.len(), "2026-12-01 21:14:03 +01:00".len(), "{s}");
        assert_eq!(
            (re[4], re[7], re[10], re[13], re[16], re[19]),
            (b'-', b'-', b' ', b':', b':', b' '),
            "{s}"
        );
        assert!(s.ends_with(":00") || s.ends_with(":30") || s.ends_with(":45"), "{s}");
        assert_eq!(local_str("not a time"), "not a time");
    }
}
