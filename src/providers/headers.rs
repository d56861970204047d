//! Reading what providers say about waiting in their response headers: `retry-after-ms`,
//! `retry-after` (seconds or an HTTP date), OpenAI-style `x-ratelimit-*` and
//! `anthropic-ratelimit-*`. Every function takes "now" as a parameter so that absolute
//! times turn into durations deterministically.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

use crate::limits::RateLimitInfo;

/// How long the provider asked us to wait before retrying: `retry-after-ms` wins over
/// `retry-after`; when neither is present and the response is a 429, the time one unit of
/// the exhausted limit (from `limits`) takes to come back stands in. Not its reset: a
/// provider's bucket refills continuously and its reset is when the bucket is full again,
/// which for a minute's budget is up to a minute of waiting for nothing.
pub fn retry_after(
    headers: &HeaderMap,
    is_rate_limited: bool,
    limits: Option<&RateLimitInfo>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(d) = text(headers, "retry-after-ms").and_then(parse_retry_after_ms) {
        return Some(d);
    }
    if let Some(d) = text(headers, "retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(d);
    }
    if is_rate_limited {
        return limits.and_then(one_unit_of_exhausted);
    }
    None
}

/// The rate-limit headers of a response, or `None` when it carried none.
/// `anthropic-ratelimit-tokens-*` is Anthropic's most restrictive token limit; when it is
/// absent, the input- or output-token limit with the fewest remaining tokens stands in.
pub fn rate_limits(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitInfo> {
    let num = |name: &str| text(headers, name).and_then(|v| v.parse::<u64>().ok());
    let mut info = RateLimitInfo {
        limit_requests: num("x-ratelimit-limit-requests"),
        remaining_requests: num("x-ratelimit-remaining-requests"),
        reset_requests: text(headers, "x-ratelimit-reset-requests").and_then(parse_reset),
        limit_tokens: num("x-ratelimit-limit-tokens"),
        remaining_tokens: num("x-ratelimit-remaining-tokens"),
        reset_tokens: text(headers, "x-ratelimit-reset-tokens").and_then(parse_reset),
    };
    let anthropic = |what: &str| {
        let limit = num(&format!("anthropic-ratelimit-{what}-limit"));
        let remaining = num(&format!("anthropic-ratelimit-{what}-remaining"));
        let reset = text(headers, &format!("anthropic-ratelimit-{what}-reset"))
            .and_then(|v| parse_rfc3339_reset(v, now));
        (limit.is_some() || remaining.is_some() || reset.is_some())
            .then_some((limit, remaining, reset))
    };
    if let Some((limit, remaining, reset)) = anthropic("requests") {
        info.limit_requests = info.limit_requests.or(limit);
        info.remaining_requests = info.remaining_requests.or(remaining);
        info.reset_requests = info.reset_requests.or(reset);
    }
    let tokens = anthropic("tokens").or_else(|| {
        [anthropic("input-tokens"), anthropic("output-tokens")]
            .into_iter()
            .flatten()
            .min_by_key(|(_, remaining, _)| remaining.unwrap_or(u64::MAX))
    });
    if let Some((limit, remaining, reset)) = tokens {
        info.limit_tokens = info.limit_tokens.or(limit);
        info.remaining_tokens = info.remaining_tokens.or(remaining);
        info.reset_tokens = info.reset_tokens.or(reset);
    }
    (info != RateLimitInfo::default()).then_some(info)
}

/// `retry-after-ms: 1500` or `retry-after-ms: 12.5` (milliseconds).
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    from_nanos(value.trim().parse::<f64>().ok()? * 1e6)
}

/// `retry-after: 2`, `retry-after: 1.5` (seconds) or
/// `retry-after: Wed, 21 Oct 2015 07:28:00 GMT` (a date; a past date means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return from_nanos(secs * 1e9);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An `x-ratelimit-reset-*` duration in Go's notation: `20ms`, `1s`, `0.5s`, `6m0s`,
/// `1h2m3.5s`, `500us`. A bare number is taken as seconds.
pub fn parse_reset(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(secs) = value.parse::<f64>() {
        return from_nanos(secs * 1e9);
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut nanos = 0f64;
    let mut rest = value;
    while !rest.is_empty() {
        let number_end = rest.find(|c| !is_number(c)).unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(is_number).unwrap_or(rest.len());
        let unit_nanos = match &rest[..unit_end] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" | "μs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        nanos += (number * unit_nanos).round();
        rest = &rest[unit_end..];
    }
    from_nanos(nanos)
}

/// An `anthropic-ratelimit-*-reset` time (RFC 3339) as a duration from `now`; a time in the
/// past means "now".
pub fn parse_rfc3339_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let at = DateTime::parse_from_rfc3339(value.trim()).ok()?;
    let now: DateTime<Utc> = now.into();
    Some(
        at.with_timezone(&Utc)
            .signed_duration_since(now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// How long one unit of whichever limit is used up takes to come back: its reset (the time
/// until it is full) over its size. `None` when no limit says it is used up, or it names no
/// size or reset.
fn one_unit_of_exhausted(limits: &RateLimitInfo) -> Option<Duration> {
    let one_unit = |remaining: Option<u64>, limit: Option<u64>, reset: Option<Duration>| {
        (remaining == Some(0))
            .then(|| Some(reset? / u32::try_from(limit?.max(1)).unwrap_or(u32::MAX)))
            .flatten()
    };
    let requests = one_unit(
        limits.remaining_requests,
        limits.limit_requests,
        limits.reset_requests,
    );
    let tokens = one_unit(
        limits.remaining_tokens,
        limits.limit_tokens,
        limits.reset_tokens,
    );
    requests.max(tokens)
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn from_nanos(nanos: f64) -> Option<Duration> {
    // Beyond about 584 years a u64 of nanoseconds overflows; no provider means that.
    (nanos.is_finite() && nanos >= 0.0 && nanos < u64::MAX as f64)
        .then(|| Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    /// 2015-10-21T07:28:00Z, the date of RFC 9110's example.
    fn now() -> SystemTime {
        httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap()
    }

    #[test]
    fn retry_after_ms_integer_and_float() {
        assert_eq!(
            parse_retry_after_ms("1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after_ms(" 12.5 "),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(parse_retry_after_ms("-1"), None);
        assert_eq!(parse_retry_after_ms("soon"), None);
    }

    /// Asserts that `parse` reads each value as given.
    fn reads(parse: impl Fn(&str) -> Option<Duration>, cases: &[(&str, Option<Duration>)]) {
        for (value, want) in cases {
            assert_eq!(parse(value), *want, "{value}");
        }
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let ms = Duration::from_millis;
        let cases = [
            ("2", Some(ms(2000))),
            ("0.5", Some(ms(500))),
            ("Wed, 21 Oct 2015 07:28:30 GMT", Some(ms(30_000))),
            // A date already past means retry now.
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO)),
            ("later", None),
        ];
        reads(|v| parse_retry_after(v, now()), &cases);
    }

    #[test]
    fn go_style_reset_durations() {
        let ms = Duration::from_millis;
        let cases = [
            ("20ms", Some(ms(20))),
            ("1s", Some(ms(1000))),
            ("0.5s", Some(ms(500))),
            ("6m0s", Some(ms(360_000))),
            ("1h2m3.5s", Some(ms(3_723_500))),
            ("500us", Some(Duration::from_micros(500))),
            ("7.66s", Some(ms(7_660))),
            ("3", Some(ms(3000))),
            ("", None),
            ("5x", None),
            ("s", None),
        ];
        reads(parse_reset, &cases);
    }

    #[test]
    fn rfc3339_reset_relative_to_now() {
        let ms = Duration::from_millis;
        let cases = [
            ("2015-10-21T07:28:42Z", Some(ms(42_000))),
            ("2015-10-21T09:28:01.5+02:00", Some(ms(1500))),
            ("2015-10-21T07:00:00Z", Some(Duration::ZERO)),
            ("tomorrow", None),
        ];
        reads(|v| parse_rfc3339_reset(v, now()), &cases);
    }

    #[test]
    fn openai_rate_limit_headers() {
        let headers = map(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(
            rate_limits(&headers, now()),
            Some(RateLimitInfo {
                limit_requests: Some(60),
                remaining_requests: Some(59),
                reset_requests: Some(Duration::from_secs(1)),
                limit_tokens: Some(150_000),
                remaining_tokens: Some(149_984),
                reset_tokens: Some(Duration::from_secs(360)),
            })
        );
        assert_eq!(
            rate_limits(&map(&[("content-type", "text/plain")]), now()),
            None
        );
    }

    #[test]
    fn anthropic_rate_limit_headers() {
        let headers = map(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2015-10-21T07:28:12Z"),
            ("anthropic-ratelimit-tokens-limit", "80000"),
            ("anthropic-ratelimit-tokens-remaining", "79000"),
            ("anthropic-ratelimit-tokens-reset", "2015-10-21T07:28:01Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "100"),
        ]);
        assert_eq!(
            rate_limits(&headers, now()),
            Some(RateLimitInfo {
                limit_requests: Some(50),
                remaining_requests: Some(0),
                reset_requests: Some(Duration::from_secs(12)),
                limit_tokens: Some(80_000),
                remaining_tokens: Some(79_000),
                reset_tokens: Some(Duration::from_secs(1)),
            })
        );
    }

    #[test]
    fn anthropic_input_output_tokens_take_the_tighter_one() {
        let headers = map(&[
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2015-10-21T07:28:01Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "10"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2015-10-21T07:28:30Z",
            ),
        ]);
        let info = rate_limits(&headers, now()).unwrap();
        assert_eq!(info.limit_tokens, Some(8000));
        assert_eq!(info.remaining_tokens, Some(10));
        assert_eq!(info.reset_tokens, Some(Duration::from_secs(30)));
        assert_eq!(info.limit_requests, None);
    }

    #[test]
    fn retry_after_prefers_ms_then_seconds() {
        let both = map(&[("retry-after-ms", "250"), ("retry-after", "2")]);
        assert_eq!(
            retry_after(&both, true, None, now()),
            Some(Duration::from_millis(250))
        );
        let seconds = map(&[("retry-after", "2")]);
        assert_eq!(
            retry_after(&seconds, false, None, now()),
            Some(Duration::from_secs(2))
        );
        let date = map(&[("retry-after", "Wed, 21 Oct 2015 07:28:05 GMT")]);
        assert_eq!(
            retry_after(&date, true, None, now()),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn retry_after_falls_back_to_one_unit_of_the_exhausted_limit_on_429() {
        let openai = |remaining_tokens: &'static str| {
            map(&[
                ("x-ratelimit-limit-requests", "600"),
                ("x-ratelimit-remaining-requests", "10"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-limit-tokens", "1000"),
                ("x-ratelimit-remaining-tokens", remaining_tokens),
                ("x-ratelimit-reset-tokens", "20s"),
            ])
        };
        let spent = openai("0");
        let limits = rate_limits(&spent, now());
        // A full bucket of 1000 tokens in 20 s gives one back every 20 ms.
        assert_eq!(
            retry_after(&spent, true, limits.as_ref(), now()),
            Some(Duration::from_millis(20))
        );
        // Not a 429: resets are no reason to wait.
        assert_eq!(retry_after(&spent, false, limits.as_ref(), now()), None);
        // Nothing used up: no reset stands in.
        let room = openai("500");
        let limits = rate_limits(&room, now());
        assert_eq!(retry_after(&room, true, limits.as_ref(), now()), None);

        let anthropic = map(&[
            ("anthropic-ratelimit-requests-limit", "60"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2015-10-21T07:29:00Z"),
        ]);
        let limits = rate_limits(&anthropic, now());
        assert_eq!(
            retry_after(&anthropic, true, limits.as_ref(), now()),
            Some(Duration::from_secs(1))
        );
        assert_eq!(retry_after(&map(&[]), true, None, now()), None);
    }
}
