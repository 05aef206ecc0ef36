//! Durations on the command line: `250ms`, `3s`, `2m`, `1h` (a bare number means seconds).

use std::time::Duration;

/// Why a duration flag was refused: one line naming the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No number before the unit.
    #[error("invalid duration {0:?}: expected a number with ms, s, m or h (e.g. 250ms, 3s)")]
    NotANumber(String),
    /// A unit other than ms, s, m or h.
    #[error("invalid duration {0:?}: unit must be ms, s, m or h")]
    Unit(String),
    /// Negative, not finite, or above 10^9 seconds.
    #[error("invalid duration {0:?}: out of range")]
    OutOfRange(String),
}

/// Parses a duration flag, with a one-line error naming the input.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(DurationError::Unit(s.to_owned())),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(DurationError::OutOfRange(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse("3 days").unwrap_err().to_string().contains("unit"));
        assert!(parse("fast")
            .unwrap_err()
            .to_string()
            .contains("expected a number"));
    }
}
