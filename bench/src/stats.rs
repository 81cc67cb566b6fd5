//! Percentiles of samples in milliseconds (nearest rank, so every figure is a real sample).

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// The sample at percentile `p` (0..=100) of sorted `samples`, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    pub fn of_ms(samples: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            sorted.iter().sum::<f64>() / n as f64
        };
        Summary {
            n,
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            mean_ms: mean,
            min_ms: sorted.first().copied().unwrap_or(f64::NAN),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub fn of(durations: &[Duration]) -> Summary {
        Summary::of_ms(&durations.iter().copied().map(ms).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_samples() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let summary = Summary::of_ms(&samples);
        assert_eq!((summary.p50_ms, summary.p90_ms, summary.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!((summary.min_ms, summary.max_ms, summary.mean_ms), (1.0, 100.0, 50.5));
        assert_eq!(Summary::of_ms(&[7.0]).p99_ms, 7.0);
        assert!(Summary::of_ms(&[]).p50_ms.is_nan());
    }
}
