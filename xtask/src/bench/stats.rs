//! Order statistics over raw samples: medians with their spread, nothing
//! averaged away.

use serde_json::{Value, json};

/// A distribution summary of samples in one unit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p5: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let q = |p: f64| quantile(&sorted, p);
        Self {
            n: sorted.len(),
            p5: q(0.05),
            p25: q(0.25),
            median: q(0.5),
            p75: q(0.75),
            p95: q(0.95),
            p99: q(0.99),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n, "p5": self.p5, "p25": self.p25, "median": self.median,
            "p75": self.p75, "p95": self.p95, "p99": self.p99,
        })
    }
}

/// Linear interpolation between the closest ranks; NaN when empty.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = p * (n - 1) as f64;
            let low = rank.floor() as usize;
            let high = rank.ceil() as usize;
            let frac = rank - low as f64;
            sorted[low] + (sorted[high] - sorted[low]) * frac
        }
    }
}

/// Parses a line of space-separated integers (a probe's samples).
pub fn parse_samples(text: &str) -> Vec<f64> {
    text.split_whitespace().filter_map(|w| w.parse::<u64>().ok()).map(|v| v as f64).collect()
}

/// Nanoseconds as a short human figure.
pub fn ns(value: f64) -> String {
    if !value.is_finite() {
        "n/a".into()
    } else if value.abs() >= 1e9 {
        format!("{:.2} s", value / 1e9)
    } else if value.abs() >= 1e6 {
        format!("{:.1} ms", value / 1e6)
    } else if value.abs() >= 1e3 {
        format!("{:.2} us", value / 1e3)
    } else {
        format!("{value:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.p25, 2.0);
        assert_eq!(s.p75, 4.0);
        assert!(Summary::of(&[]).median.is_nan());
    }
}
