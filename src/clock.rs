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
