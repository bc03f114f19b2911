//! The bench's report: one document with every workload's figures, shown as a table on the
//! terminal or as JSON (`--json`), and the number formats both use.

use std::fmt::Write as _;

use serde::Serialize;

use super::contended::{self, Contended};
use super::handoff::Handoff;
use super::many_locks::ManyLocks;
use super::uncontended::Uncontended;
use super::waiters::Waiters;

/// Everything one `interlock bench` run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The URL, password hidden.
    pub url: String,
    /// The backend's short name.
    pub backend: String,
    /// `--mode`.
    pub mode: String,
    /// Where it ran.
    pub machine: Machine,
    /// `--duration`, in seconds.
    pub duration_s: f64,
    /// `uncontended`, if run.
    pub uncontended: Option<Uncontended>,
    /// `contended`, one entry per client count, if run.
    pub contended: Option<Vec<Contended>>,
    /// `handoff`, if run.
    pub handoff: Option<Handoff>,
    /// `many-locks`, if run.
    pub many_locks: Option<ManyLocks>,
    /// `waiters`, if run.
    pub waiters: Option<Waiters>,
    /// Remarks about the run as a whole.
    pub notes: Vec<String>,
    /// Exclusion violations found (the command then exits 70).
    pub violations: Vec<String>,
}

/// The machine the figures come from.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description (unknown parts stay `?`).
    pub fn detect() -> Machine {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "?".into());
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |k| k.trim().to_owned());
        Machine { cpus, cpu_model, kernel }
    }
}

/// One block of the table: a title, a header row, rows, and notes under it.
#[derive(Debug, Default)]
pub struct Section {
    /// The title.
    pub title: String,
    /// Column names (the first column is the row label).
    pub header: Vec<String>,
    /// Rows, as wide as the header.
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the rows.
    pub notes: Vec<String>,
}

impl Section {
    /// Renders the section: label column left-aligned, the others right-aligned.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "{}\n{}", self.title, "─".repeat(self.title.chars().count()));
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(cols) {
                width[i] = width[i].max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::from("  ");
            for (i, cell) in row.iter().enumerate().take(cols) {
                let pad = width[i] - cell.chars().count();
                if i == 0 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str("  ");
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for note in &self.notes {
            let _ = writeln!(out, "  · {note}");
        }
        out.push('\n');
    }
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "interlock bench: {} (backend {}, mode {})", self.url, self.backend, self.mode);
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}, Linux {}\n",
            self.machine.cpus, self.machine.cpu_model, self.machine.kernel
        );
        if let Some(u) = &self.uncontended {
            u.section().render(&mut out);
        }
        if let Some(c) = &self.contended {
            contended::section(c, std::time::Duration::from_secs_f64(self.duration_s)).render(&mut out);
        }
        if let Some(h) = &self.handoff {
            h.section().render(&mut out);
        }
        if let Some(m) = &self.many_locks {
            m.section().render(&mut out);
        }
        if let Some(w) = &self.waiters {
            w.section().render(&mut out);
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        for v in &self.violations {
            let _ = writeln!(out, "!!! EXCLUSION VIOLATED: {v}");
        }
        out
    }

    /// The JSON document.
    pub fn json(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail; keep a fallback anyway.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string())) + "\n"
    }
}

/// A duration in nanoseconds, in a readable unit: `850 ns`, `12.3 µs`, `4.56 ms`, `1.23 s`.
pub fn ns(v: f64) -> String {
    if v < 1e3 {
        format!("{v:.0} ns")
    } else if v < 1e6 {
        format!("{:.1} µs", v / 1e3)
    } else if v < 1e9 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

/// Seconds, readable.
pub fn secs(s: f64) -> String {
    ns(s * 1e9)
}

/// A rate: `83,412`.
pub fn ops(v: f64) -> String {
    count(v.round() as u64)
}

/// An integer with thousands separators.
pub fn count(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio: `18.7x`, or `—` when there is none.
pub fn times(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.0}x"),
        Some(r) => format!("{r:.2}x"),
        None => "—".into(),
    }
}

/// A size in bytes: `312 B`, `1.2 KiB`.
pub fn bytes(v: f64) -> String {
    if v < 1024.0 { format!("{v:.0} B") } else { format!("{:.1} KiB", v / 1024.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ns(850.0), "850 ns");
        assert_eq!(ns(12_345.0), "12.3 µs");
        assert_eq!(ns(4_560_000.0), "4.56 ms");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(times(Some(18.66)), "19x");
        assert_eq!(times(Some(1.234)), "1.23x");
        assert_eq!(times(None), "—");
        assert_eq!(bytes(2048.0), "2.0 KiB");
    }

    #[test]
    fn renders_aligned() {
        let s = Section {
            title: "t".into(),
            header: vec!["".into(), "a".into()],
            rows: vec![vec!["long label".into(), "1".into()], vec!["x".into(), "12345".into()]],
            notes: vec!["n".into()],
        };
        let mut out = String::new();
        s.render(&mut out);
        assert_eq!(out, "t\n─\n                  a\n  long label      1\n  x           12345\n  · n\n\n");
    }
}
