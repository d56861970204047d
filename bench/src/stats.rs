//! Percentiles and small helpers for latency samples (milliseconds).

use serde::Serialize;

/// A latency distribution in milliseconds (nearest-rank percentiles, as the peers' scripts).
#[derive(Clone, Debug, Serialize)]
pub struct Dist {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted values: the value at rank ceil(p/100 * n).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn dist(values: &[f64]) -> Option<Dist> {
    if values.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = values.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Some(Dist {
        n: s.len(),
        min: r3(s[0]),
        p50: r3(pct(&s, 50.0)),
        p95: r3(pct(&s, 95.0)),
        p99: r3(pct(&s, 99.0)),
        max: r3(s[s.len() - 1]),
        mean: r3(s.iter().sum::<f64>() / s.len() as f64),
    })
}

/// Rounds to three decimals (microseconds when the unit is milliseconds).
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Microseconds since the Unix epoch on the wall clock, the clock the server stamps its
/// rows with (both run on this machine).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(pct(&v, 50.0), 50.0);
        assert_eq!(pct(&v, 99.0), 99.0);
        assert_eq!(pct(&v, 100.0), 100.0);
        assert_eq!(pct(&[3.0], 99.0), 3.0);
        let d = dist(&[2.0, 1.0, 3.0]).unwrap();
        assert_eq!((d.min, d.p50, d.max), (1.0, 2.0, 3.0));
    }
}
