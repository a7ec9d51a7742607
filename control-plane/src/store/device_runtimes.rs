//! The runtimes each device offers (migration 0011), as its last fleet
//! hello listed them, and which versions that lets it be sent: a version
//! whose signed `ferry.target.runtime` tag names a runtime goes only to
//! devices that offer it (`fleet::assign`, rollouts' inputs). Stored by
//! `Store::set_device_runtimes` (`device_sessions`).

/// Most runtimes, and longest name, stored from a hello: the list comes
/// from the device.
const MAX_RUNTIMES: usize = 16;
const MAX_RUNTIME_NAME: usize = 64;

/// A hello's runtimes as stored: at most [`MAX_RUNTIMES`], each a short
/// name of `[a-z0-9._-]` (anything else is dropped), comma-joined.
pub fn runtimes_to_string<S: AsRef<str>>(runtimes: &[S]) -> String {
    runtimes
        .iter()
        .map(AsRef::as_ref)
        .filter(|r| {
            !r.is_empty()
                && r.len() <= MAX_RUNTIME_NAME
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
        .take(MAX_RUNTIMES)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn runtimes_from_string(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a device offering `runtimes` (`None`: not yet known) may be
/// sent a version that requires `required` (its `ferry.target.runtime`
/// tag; `None`: any device). A requirement this server cannot parse, or a
/// device that has not said hello, gets nothing sent.
pub fn runtime_offered(required: Option<&str>, runtimes: Option<&[String]>) -> bool {
    let Some(required) = required else {
        return true;
    };
    match (ferry_protocol::RequiredRuntime::parse(required), runtimes) {
        (Ok(r), Some(offered)) => r.offered_by(offered),
        _ => false,
    }
}
