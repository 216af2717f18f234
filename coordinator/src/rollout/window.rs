//! Maintenance windows: local wall-clock ranges on chosen days in an IANA time
//! zone, evaluated with jiff so daylight-saving transitions are handled the way
//! a human reading the spec expects (02:00–04:00 Europe/Rome means local time,
//! also on the night the clocks change).

use elysium_spec::{DAYS, Window, parse_hhmm};
use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;

fn day_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

/// Whether `w` is open at Unix second `now`. A window whose end is before its
/// start crosses midnight and belongs to the day it starts on.
pub fn is_open(w: &Window, now: i64) -> bool {
    let (Some(start), Some(end), Ok(tz), Ok(ts)) =
        (parse_hhmm(&w.start), parse_hhmm(&w.end), TimeZone::get(&w.time_zone), Timestamp::from_second(now))
    else {
        // Validated when the spec was set; a window we cannot read is closed.
        return false;
    };
    let local = ts.to_zoned(tz);
    let minute = u32::from(local.hour() as u8) * 60 + u32::from(local.minute() as u8);
    let today = day_index(local.weekday());
    let yesterday = (today + 6) % 7;
    let on = |day: usize| w.days.is_empty() || w.days.iter().any(|d| d.eq_ignore_ascii_case(DAYS[day]));
    if start < end {
        on(today) && minute >= start && minute < end
    } else {
        (on(today) && minute >= start) || (on(yesterday) && minute < end)
    }
}

/// Whether any window is open (no windows: always).
pub fn any_open(windows: &[Window], now: i64) -> bool {
    windows.is_empty() || windows.iter().any(|w| is_open(w, now))
}

/// The next Unix second (minute resolution, up to 8 days ahead) at which a
/// window opens; `None` when one is open now or none ever opens.
pub fn next_open(windows: &[Window], now: i64) -> Option<i64> {
    if any_open(windows, now) {
        return None;
    }
    let first = now - now.rem_euclid(60) + 60;
    (0..8 * 24 * 60).map(|i| first + i * 60).find(|t| any_open(windows, *t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rome_sunday() -> Window {
        Window {
            days: vec!["sun".into()],
            start: "02:00".into(),
            end: "04:00".into(),
            time_zone: "Europe/Rome".into(),
        }
    }

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn sunday_two_to_four_in_rome_winter_and_summer() {
        let w = rome_sunday();
        // 2026-01-11 is a Sunday; Rome is UTC+1 in winter.
        assert!(!is_open(&w, at("2026-01-11T00:59:00Z")));
        assert!(is_open(&w, at("2026-01-11T01:00:00Z")));
        assert!(is_open(&w, at("2026-01-11T02:59:00Z")));
        assert!(!is_open(&w, at("2026-01-11T03:00:00Z")));
        // Summer: UTC+2, so the same local window is an hour earlier in UTC.
        assert!(is_open(&w, at("2026-07-12T00:00:00Z")));
        assert!(!is_open(&w, at("2026-07-12T02:00:00Z")));
        // Saturday at the same hours: closed.
        assert!(!is_open(&w, at("2026-07-11T00:30:00Z")));
    }

    #[test]
    fn dst_nights_keep_the_local_meaning() {
        let w = rome_sunday();
        // 2026-03-29: clocks jump 02:00 → 03:00 local (01:00 UTC). The window is
        // 03:00–04:00 local that night, one hour: 01:00–02:00 UTC.
        assert!(!is_open(&w, at("2026-03-29T00:59:00Z")));
        assert!(is_open(&w, at("2026-03-29T01:00:00Z")));
        assert!(!is_open(&w, at("2026-03-29T02:00:00Z")));
        // 2026-10-25: clocks fall back 03:00 → 02:00 local (01:00 UTC): 02:00–04:00
        // local lasts three hours, 00:00–03:00 UTC.
        assert!(is_open(&w, at("2026-10-25T00:00:00Z")));
        assert!(is_open(&w, at("2026-10-25T02:59:00Z")));
        assert!(!is_open(&w, at("2026-10-25T03:00:00Z")));
    }

    #[test]
    fn windows_crossing_midnight_belong_to_their_start_day() {
        let w = Window {
            days: vec!["sat".into()],
            start: "23:00".into(),
            end: "01:00".into(),
            time_zone: "UTC".into(),
        };
        assert!(is_open(&w, at("2026-07-11T23:30:00Z"))); // Saturday night
        assert!(is_open(&w, at("2026-07-12T00:30:00Z"))); // early Sunday, still Saturday's window
        assert!(!is_open(&w, at("2026-07-12T23:30:00Z"))); // Sunday night
    }

    #[test]
    fn next_opening_and_no_windows() {
        let w = rome_sunday();
        assert_eq!(
            next_open(std::slice::from_ref(&w), at("2026-07-11T12:00:00Z")),
            Some(at("2026-07-12T00:00:00Z"))
        );
        assert_eq!(next_open(&[w], at("2026-07-12T00:10:00Z")), None);
        assert!(any_open(&[], 0));
    }
}
