//! What a run prints: mismatch transcripts (stderr), the progress line (stdout, only on a
//! terminal) and the final summary (stdout).

use std::io::Write as _;
use std::time::Duration;

use crate::check::Run;
use crate::cli::Config;
use crate::reactor::Observer;
use crate::script::{ErrorClass, Kind};
use crate::stats::{Stats, Summary};

/// Transcripts printed in full; later mismatches get one line each.
const FULL_TRANSCRIPTS: u64 = 10;

/// Prints while the run goes.
pub struct Printer {
    /// Show a progress line (stdout is a terminal).
    pub progress: bool,
    mismatches: u64,
}

impl Printer {
    /// A printer; `progress` when stdout is a terminal.
    pub fn new(progress: bool) -> Printer {
        Printer {
            progress,
            mismatches: 0,
        }
    }

    /// Ends the progress line.
    pub fn finish(&self) {
        if self.progress {
            println!();
        }
    }
}

impl Observer for Printer {
    fn mismatch(&mut self, run: &Run) {
        self.mismatches += 1;
        if self.mismatches <= FULL_TRANSCRIPTS {
            eprintln!("\n{}", run.transcript());
        } else if self.mismatches <= 10 * FULL_TRANSCRIPTS
            && let crate::check::Status::Failed(why) = run.status()
        {
            eprintln!("session #{}: MISMATCH: {why}", run.index);
        }
    }

    fn progress(&mut self, s: &Stats, elapsed: Duration, open: usize) {
        if !self.progress {
            return;
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        print!(
            "\r[{:6.1}s] sessions {}  ops {} ({:.0}/s)  delivered {}  mismatches {}  open {}   ",
            secs,
            s.sessions,
            s.ops,
            s.ops as f64 / secs,
            s.delivered,
            s.mismatches,
            open
        );
        let _ = std::io::stdout().flush();
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn row(name: &str, s: Summary) -> String {
    format!(
        "  {name:<12} {:>9} {:>10} {:>10} {:>10}",
        s.count,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    )
}

/// The final summary.
pub fn summary(cfg: &Config, s: &Stats, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut out = vec![
        format!(
            "smtp-stress {}: {} connections, seed {:#x}, error rate {}",
            cfg.addr, cfg.connections, cfg.seed, cfg.error_rate
        ),
        format!(
            "elapsed {secs:.2} s, sessions {}, operations {} ({:.1} ops/s), messages delivered {} ({:.1}/s)",
            s.sessions,
            s.ops,
            s.ops as f64 / secs,
            s.delivered,
            s.delivered as f64 / secs
        ),
    ];
    let provoked: u64 = s.provoked.values().sum();
    let by_class: Vec<String> = ErrorClass::ALL
        .iter()
        .filter_map(|c| s.provoked.get(c).map(|n| format!("{} {n}", c.name())))
        .collect();
    out.push(format!(
        "errors provoked: {provoked} sessions ({})",
        by_class.join(", ")
    ));
    out.push(format!("mismatches: {}", s.mismatches));
    out.push(format!(
        "  {:<12} {:>9} {:>10} {:>10} {:>10}",
        "latency", "count", "p50 ms", "p99 ms", "max ms"
    ));
    for k in Kind::ALL {
        if let Some(sum) = s.latency.get(&k).and_then(|x| x.summary()) {
            out.push(row(k.name(), sum));
        }
    }
    if let Some(sum) = s.transactions.summary() {
        out.push(row("transaction", sum));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Sink;
    use crate::cli::Stop;
    use crate::script::Limits;

    #[test]
    fn summary_lists_figures() {
        let cfg = Config {
            addr: "127.0.0.1:25".parse().unwrap(),
            connections: 3,
            stop: Stop::Count(1),
            seed: 255,
            error_rate: 0.5,
            maildir: None,
            limits: Limits {
                max_recipients: 1,
                max_size: 1,
                silent_timeout: None,
            },
            reply_timeout: Duration::from_secs(1),
        };
        let mut s = Stats::default();
        s.reply(Kind::Mail, Duration::from_millis(2));
        s.provoked.insert(ErrorClass::Oversize, 2);
        let text = summary(&cfg, &s, Duration::from_secs(2));
        assert!(text.contains("seed 0xff"), "{text}");
        assert!(text.contains("operations 1 (0.5 ops/s)"), "{text}");
        assert!(text.contains("oversize 2"), "{text}");
        assert!(text.contains("MAIL"), "{text}");
        assert!(text.contains("mismatches: 0"), "{text}");
    }
}
