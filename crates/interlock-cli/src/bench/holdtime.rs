//! `--hold`: how long a client keeps the lock, a single time (`1ms`) or a range (`1ms..11ms`,
//! drawn uniformly at random for every hold), as real critical sections do. The same value is
//! given to interlock's clients and to the floor's in one run, so the ratio compares like with
//! like.

use std::cell::Cell;
use std::fmt;
use std::time::Duration;

use super::clock::{self, now_ns};

/// The longest hold `--hold` accepts.
pub const MAX: Duration = Duration::from_secs(10);

/// A hold time: `min` to `max` inclusive, uniform; `min == max` is a fixed time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTime {
    /// The shortest hold.
    pub min: Duration,
    /// The longest hold.
    pub max: Duration,
}

impl HoldTime {
    /// No hold at all.
    pub const ZERO: HoldTime = HoldTime { min: Duration::ZERO, max: Duration::ZERO };

    /// Always `d`.
    pub const fn fixed(d: Duration) -> HoldTime {
        HoldTime { min: d, max: d }
    }

    /// True when every hold is zero.
    pub fn is_zero(&self) -> bool {
        self.max.is_zero()
    }

    /// Parses `--hold`: `DUR` or `DUR..DUR` (units ms, us, s; e.g. `1ms..11ms`), the first at most
    /// the second, both at most [`MAX`].
    ///
    /// # Errors
    ///
    /// A one-line reason for clap to show.
    pub fn parse(text: &str) -> Result<HoldTime, String> {
        let one = |t: &str| crate::acquire::parse_dur(t).map_err(|why| format!("--hold `{text}`: {why}"));
        let (min, max) = match text.split_once("..") {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let d = one(text)?;
                (d, d)
            }
        };
        if min > max {
            return Err(format!("--hold `{text}`: the range must go from the shorter to the longer time"));
        }
        if max > MAX {
            return Err(format!("--hold `{text}`: a hold must be at most {} s", MAX.as_secs()));
        }
        Ok(HoldTime { min, max })
    }

    /// One hold drawn uniformly from the range (a fresh stream per thread, seeded from the pid and
    /// the clock, so that processes do not move in step).
    pub fn draw(&self) -> Duration {
        if self.min >= self.max {
            return self.min;
        }
        let span = clock::ns(self.max - self.min);
        self.min + Duration::from_nanos(next_random() % span.saturating_add(1))
    }

    /// The `bench-client` flags that pass this hold on.
    pub fn args(&self) -> [String; 4] {
        ["--hold-us".into(), self.min.as_micros().to_string(), "--hold-max-us".into(), self.max.as_micros().to_string()]
    }

    /// From the `bench-client` flags: `max_us` below `min_us` (or absent, 0) means a fixed time.
    pub fn from_micros(min_us: u64, max_us: u64) -> HoldTime {
        HoldTime { min: Duration::from_micros(min_us), max: Duration::from_micros(max_us.max(min_us)) }
    }
}

impl fmt::Display for HoldTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |d: Duration| {
            if d.as_micros().is_multiple_of(1000) {
                format!("{} ms", d.as_millis())
            } else {
                format!("{} µs", d.as_micros())
            }
        };
        if self.min == self.max {
            write!(f, "{}", show(self.min))
        } else {
            write!(f, "{} to {} (uniform)", show(self.min), show(self.max))
        }
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let s = now_ns() ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    if s == 0 { 1 } else { s }
}

/// xorshift64*: plenty for spreading hold times, no dependency.
fn next_random() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_times_and_ranges() {
        let ms = Duration::from_millis;
        assert_eq!(HoldTime::parse("1ms"), Ok(HoldTime::fixed(ms(1))));
        assert_eq!(HoldTime::parse("1ms..11ms"), Ok(HoldTime { min: ms(1), max: ms(11) }));
        assert_eq!(HoldTime::parse("500us..0.002"), Ok(HoldTime { min: Duration::from_micros(500), max: ms(2) }));
        assert_eq!(HoldTime::parse("0"), Ok(HoldTime::ZERO));
        for bad in ["11ms..1ms", "1ms..", "..1ms", "x", "1ms..2ms..3ms", "-1ms", "11s", "1ms..1h"] {
            let e = HoldTime::parse(bad).expect_err(bad);
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn draws_stay_in_the_range_and_spread() {
        let h = HoldTime { min: Duration::from_millis(1), max: Duration::from_millis(11) };
        let draws: Vec<Duration> = (0..2000).map(|_| h.draw()).collect();
        assert!(draws.iter().all(|d| (h.min..=h.max).contains(d)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(3)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(9)));
        assert_eq!(HoldTime::fixed(Duration::from_millis(2)).draw(), Duration::from_millis(2));
        assert_eq!(HoldTime::from_micros(5, 0), HoldTime::fixed(Duration::from_micros(5)));
    }
}
