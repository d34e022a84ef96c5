//! The JSON log line, built in one buffer and written at once: byte for byte what tracing-subscriber's JSON format
//! (`json().flatten_event(true).with_current_span(false)`) writes, without its per-event costs (a `String` for the
//! timestamp formatted from scratch, serde's serializer over a UTF-8-checking adaptor, one check per event for a
//! `log` record). An event inside a span, or a `log` record, is handed to that format itself (it prints the span
//! list, or the record's own target).
//!
//! The decision line (one per Check) cost ~20 k instructions the library's way (BENCHMARKS.md, *Profiles*).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime as LibTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format of `init_logging`'s JSON logs.
pub struct JsonLine {
    library: Format<Json, LibTime>,
}

impl JsonLine {
    /// The format (and the library's, for what it hands over).
    pub fn new() -> Self {
        JsonLine {
            library: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false),
        }
    }
}

impl Default for JsonLine {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let in_span = event.parent().is_some() || ctx.lookup_current().is_some();
        if in_span || meta.fields().field("log.target").is_some() {
            return self.library.format_event(ctx, writer, event);
        }
        // The line is built in a buffer of this thread's (plain `String` pushes, no dynamic `fmt::Write` call per
        // piece) and handed over in one write. The library's format writes instead when that buffer is taken (a
        // `Debug` value that logs while being formatted) or gone (a thread being torn down).
        let built = LINE.try_with(|cell| {
            let mut line = cell.try_borrow_mut().ok()?;
            Some(build_line(&mut line, event).and_then(|()| writer.write_str(&line)))
        });
        match built {
            Ok(Some(result)) => result,
            _ => self.library.format_event(ctx, writer, event),
        }
    }
}

/// The whole line of `event` (outside any span, not a `log` record) into `line`.
fn build_line(line: &mut String, event: &Event<'_>) -> fmt::Result {
    let meta = event.metadata();
    line.clear();
    line.push_str("{\"timestamp\":\"");
    write_timestamp(line, SystemTime::now())?;
    line.push_str("\",\"level\":\"");
    line.push_str(level_name(*meta.level()));
    line.push('"');
    let mut fields = Fields {
        out: line,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    line.push_str(",\"target\":");
    push_json_str(line, meta.target());
    line.push_str("}\n");
    Ok(())
}

thread_local! {
    /// The line being built (kept between events: no allocation per line).
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// As tracing-serde writes a level.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Each field as `,"name":value`, valued as tracing-serde's map visitor values it (strings escaped as serde_json
/// escapes them; `Debug` values as strings; numbers and booleans bare; a non-finite float as `null`).
struct Fields<'a> {
    out: &'a mut String,
    result: fmt::Result,
}

impl Fields<'_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.out.push(',');
        push_json_str(self.out, field.name());
        self.out.push(':');
        self.result = value(self.out);
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| {
            w.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            // Rare in our lines (the decision line has none): a String of its own. A Debug impl that fails drops
            // the line (the library would panic).
            let mut text = String::new();
            write!(text, "{value:?}")?;
            push_json_str(w, &text);
            Ok(())
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's own float form (ryu; null when not finite): rare enough to allocate.
        self.entry(field, |w| {
            w.push_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?);
            Ok(())
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| {
            push_json_str(w, value);
            Ok(())
        });
    }
}

/// `s` as a JSON string, escaped exactly as serde_json escapes it: `"` and `\`, the short escapes `\b \f \n \r
/// \t`, any other byte below 0x20 as `\u00XX` (lower-case hex); everything else as it is.
fn push_json_str(w: &mut String, s: &str) {
    let needs = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    w.push('"');
    if !s.bytes().any(needs) {
        w.push_str(s);
        w.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if !needs(b) {
            continue;
        }
        // Every byte escaped is ASCII, so `i` is a char boundary.
        w.push_str(&s[start..i]);
        match b {
            b'"' => w.push_str("\\\""),
            b'\\' => w.push_str("\\\\"),
            0x08 => w.push_str("\\b"),
            0x0c => w.push_str("\\f"),
            b'\n' => w.push_str("\\n"),
            b'\r' => w.push_str("\\r"),
            b'\t' => w.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                w.push_str("\\u00");
                w.push(char::from(HEX[usize::from(b >> 4)]));
                w.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    w.push_str(&s[start..]);
    w.push('"');
}

thread_local! {
    /// The last second formatted (`YYYY-MM-DDTHH:MM:SS`) and its Unix time: the date is worked out once a second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `t` as tracing-subscriber's `SystemTime` timer writes it: `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (UTC, microseconds).
fn write_timestamp(w: &mut String, t: SystemTime) -> fmt::Result {
    let Ok(since) = t.duration_since(UNIX_EPOCH) else {
        // Before 1970 (a clock set wrong): the library's own formatting.
        return write!(w, "{LibTimestamp}");
    };
    let secs = since.as_secs();
    let cached = SECOND.try_with(|cell| {
        let Ok(mut cell) = cell.try_borrow_mut() else {
            return Err(fmt::Error);
        };
        if cell.0 != secs {
            let text = &mut cell.1;
            text.clear();
            write_second(text, secs)?;
            cell.0 = secs;
        }
        w.push_str(&cell.1);
        Ok(())
    });
    if !matches!(cached, Ok(Ok(()))) {
        // The thread is being torn down (its cache gone): work the date out.
        write_second(w, secs)?;
    }
    write!(w, ".{:06}Z", since.subsec_micros())
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS` (proleptic Gregorian, UTC).
fn write_second(w: &mut impl fmt::Write, secs: u64) -> fmt::Result {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    if y > 9999 {
        write!(w, "+{y}")?;
    } else {
        write!(w, "{y:04}")?;
    }
    write!(
        w,
        "-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: the (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The library's timer (it formats "now"): for a clock before 1970, which the fast path does not handle.
struct LibTimestamp;

impl fmt::Display for LibTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut s = String::new();
        LibTime.format_time(&mut Writer::new(&mut s))?;
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é ☃ 😀 \u{2028} \u{7f}");
        for s in [all.as_str(), "", "plain", "a\"b\\c", "\u{0}\u{1f}", "end\n"] {
            let mut ours = String::new();
            push_json_str(&mut ours, s);
            assert_eq!(ours, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn dates_are_the_calendar_s() {
        let at = |secs| {
            let mut s = String::new();
            write_second(&mut s, secs).unwrap();
            s
        };
        assert_eq!(at(0), "1970-01-01T00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(at(1_709_164_799), "2024-02-28T23:59:59");
        assert_eq!(at(1_709_164_800), "2024-02-29T00:00:00");
        assert_eq!(at(1_800_000_000), "2027-01-15T08:00:00");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59");
        assert_eq!(at(253_402_300_800), "+10000-01-01T00:00:00");
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[derive(Debug)]
    #[allow(dead_code)] // read through Debug only
    struct Odd {
        text: &'static str,
        n: i32,
    }

    /// The same events through the library's JSON format and ours: equal lines once the timestamps (taken a few
    /// microseconds apart) are cut out, and timestamps of the same shape.
    fn events() {
        let err = std::io::Error::other("disk \"full\"\n");
        tracing::info!(
            policy.name = "api",
            auth.method = "bearer",
            auth.sub = "ünïcode \u{1} \"quoted\" \\ tab\t",
            decision = "allow",
            reason = "",
            "check"
        );
        tracing::warn!(
            n = 42u64,
            neg = -7i64,
            yes = true,
            f = 1.5f64,
            big = 1e21f64,
            "numbers"
        );
        tracing::error!(inf = f64::INFINITY, nan = f64::NAN, "floats");
        tracing::info!(error = %err, debug = ?Odd { text: "x\"y", n: -3 }, "display and debug");
        tracing::info!(
            error = &err as &(dyn std::error::Error + 'static),
            "an error value"
        );
        tracing::info!(wide = 1u128 << 100, bytes = 3i128, "wide");
        tracing::info!(target: "somewhere::else", "no fields but the message {}", 7);
        tracing::info!(k = 1);
        tracing::info!("a\"b" = 1, "c d" = "e", "names that need escaping");
        tracing::debug!(at = "debug", "filtered out at info");
        tracing::trace!(at = "trace", "filtered out at info");
        let span = tracing::info_span!("outer", id = 3);
        span.in_scope(|| tracing::info!(inner = "yes", "in a span"));
        tracing::info!(parent: &span, "explicit parent");
    }

    fn lines_of(make: impl FnOnce(Capture) -> tracing::Dispatch) -> Vec<String> {
        let out = Capture::default();
        tracing::dispatcher::with_default(&make(out.clone()), events);
        String::from_utf8(out.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The Unix seconds of `YYYY-MM-DDTHH:MM:SS...` (Hinnant's `days_from_civil`).
    fn secs_of(ts: &str) -> i64 {
        let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
        let (y, m, d) = (n(0..4), n(5..7), n(8..10));
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
    }

    #[test]
    fn secs_of_reads_what_write_second_wrote() {
        for secs in [
            0u64,
            951_782_400,
            1_709_164_800,
            1_800_000_000,
            4_102_444_799,
        ] {
            let mut s = String::new();
            write_second(&mut s, secs).unwrap();
            assert_eq!(secs_of(&s), secs as i64, "{s}");
        }
    }

    #[test]
    fn lines_are_the_library_s_byte_for_byte() {
        same_lines(Level::INFO, 11);
    }

    #[test]
    fn lines_are_the_library_s_at_every_level() {
        same_lines(Level::TRACE, 13);
    }

    /// The events of [`events`] at `max` give `expected` lines, ours as the library's.
    fn same_lines(max: Level, expected: usize) {
        let base = || {
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_max_level(max)
        };
        let library = lines_of(|w| base().with_writer(w).into());
        let ours = lines_of(|w| base().with_writer(w).event_format(JsonLine::new()).into());
        assert_eq!(library.len(), expected, "{library:#?}");
        assert_eq!(ours.len(), library.len(), "{ours:#?}");
        let cut = |line: &str| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ts = v["timestamp"].as_str().unwrap().to_string();
            (line.replacen(&ts, "TS", 1), ts)
        };
        for (l, o) in library.iter().zip(&ours) {
            let ((l, lts), (o, ots)) = (cut(l), cut(o));
            assert_eq!(o, l);
            assert_eq!(ots.len(), lts.len(), "{ots} vs {lts}");
            assert!(ots.ends_with('Z') && ots.as_bytes()[19] == b'.', "{ots}");
            // The same time, give or take the moment between the two runs (an hour: a busy machine).
            assert!(
                (secs_of(&ots) - secs_of(&lts)).abs() < 3600,
                "{ots} vs {lts}"
            );
        }
        assert!(
            ours.iter().any(|l| l.contains("\"spans\":[")),
            "span lists kept"
        );
    }
}
