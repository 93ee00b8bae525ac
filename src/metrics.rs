//! Counters, gauges and histograms written in Prometheus's text exposition format
//! (version 0.0.4): what the engine counts as it goes, and the writer of a scrape.
//!
//! Counting is a few additions on paths that run anyway; a scrape formats what is
//! there, with no lock and no system call. Every label set is bounded: phases,
//! reply codes, methods and results are closed lists, filters are those of the
//! configuration.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};

/// Upper bounds (seconds) of the buckets of latency histograms.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations over [`LATENCY_BUCKETS`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; the last slot is +Inf).
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Counts one duration of `secs` seconds.
    pub fn observe(&mut self, secs: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What the SMTP server side counts (the engine owns one).
#[derive(Debug, Default, Clone)]
pub struct SmtpCounters {
    /// SMTP sessions started, local ones included.
    pub sessions: u64,
    /// Connections refused before a session, by reason (`max-sessions`, ...).
    pub refused_connections: BTreeMap<&'static str, u64>,
    /// Messages committed to the queue.
    pub messages: u64,
    /// Negative replies, by the phase they answer and their code.
    pub refusals: BTreeMap<(&'static str, u16), u64>,
    /// AUTH exchanges with credentials: accepted, refused.
    pub auth: [u64; 2],
    /// Server-side TLS handshakes: completed, failed.
    pub tls: [u64; 2],
    /// Handshakes of outgoing sessions that ended: completed, failed.
    pub tls_out: [u64; 2],
    /// Reloads of the configuration: applied, failed.
    pub reloads: [u64; 2],
}

impl SmtpCounters {
    /// Counts a negative reply (4yz or 5yz) answering `phase`.
    pub fn refused(&mut self, phase: &'static str, code: u16) {
        *self.refusals.entry((phase, code)).or_default() += 1;
    }

    /// Counts a connection refused before its session began.
    pub fn refused_connection(&mut self, reason: &'static str) {
        *self.refused_connections.entry(reason).or_default() += 1;
    }
}

/// The phase a reply answers, from the client's line: the command's verb, `message`
/// for the end of the message's content.
pub fn phase_of(line: &[u8]) -> &'static str {
    const VERBS: &[&str] = &[
        "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "AUTH", "STARTTLS", "RSET", "VRFY",
        "EXPN", "NOOP", "QUIT", "HELP",
    ];
    if line == b"." {
        return "message";
    }
    let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
    VERBS
        .iter()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(verb))
        .map_or("other", |v| v)
}

/// A scrape being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty scrape.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A family of one sample without labels.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of histogram `h` (`_bucket`, `_sum`, `_count`) under `labels`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.sum);
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// The text of the scrape.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let mut h = Histogram::default();
        for s in [0.0001, 0.0005, 0.003, 0.7, 100.0] {
            h.observe(s);
        }
        let mut e = Exposition::new();
        e.family("t_seconds", "histogram", "test");
        e.histogram("t_seconds", &[("filter", "a")], &h);
        let text = e.finish();
        assert!(
            text.contains("t_seconds_bucket{filter=\"a\",le=\"0.0005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{filter=\"a\",le=\"0.005\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{filter=\"a\",le=\"1\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{filter=\"a\",le=\"10\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{filter=\"a\",le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("t_seconds_count{filter=\"a\"} 5\n"), "{text}");
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new();
        e.family("x_total", "counter", "help");
        e.sample("x_total", &[("name", "a\"b\\c\nd")], 3);
        e.single("y", "gauge", "why", 1.5);
        assert_eq!(
            e.finish(),
            "# HELP x_total help\n# TYPE x_total counter\nx_total{name=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP y why\n# TYPE y gauge\ny 1.5\n"
        );
    }

    #[test]
    fn phases_come_from_the_verb() {
        assert_eq!(phase_of(b"rcpt TO:<a@b>"), "RCPT");
        assert_eq!(phase_of(b"MAIL FROM:<>"), "MAIL");
        assert_eq!(phase_of(b"."), "message");
        assert_eq!(phase_of(b"GET / HTTP/1.0"), "other");
        assert_eq!(phase_of(b""), "other");
    }
}
