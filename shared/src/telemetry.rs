//! Tracing setup: JSON lines in Lambda (or with `LOG_FORMAT=json`), human-readable otherwise,
//! with colour only on a terminal (and never with `NO_COLOR`). [`Progress`] prints a progress
//! line that log lines do not run into.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// Whether a `\r`-updated progress line is on the terminal now (without a newline).
static PROGRESS_ON_SCREEN: AtomicBool = AtomicBool::new(false);

pub fn init(format: crate::config::LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == crate::config::LogFormat::Json;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour && !json)
        .with_writer(stderr_after_progress);
    let _ = if json {
        builder.json().without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// stderr for a log line: a progress line on screen is ended first, so the two never share a
/// line.
fn stderr_after_progress() -> std::io::Stderr {
    let mut err = std::io::stderr();
    if PROGRESS_ON_SCREEN.swap(false, Ordering::SeqCst) {
        let _ = err.write_all(b"\n");
    }
    err
}

/// A progress report on stderr: on a terminal one line rewritten in place (at most 10 times a
/// second); otherwise (a log file, CI) a whole line every 5 seconds.
pub struct Progress {
    tty: bool,
    last: Option<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn update(&mut self, text: &str) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            PROGRESS_ON_SCREEN.store(true, Ordering::SeqCst);
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// Ends the progress line (a terminal gets its newline).
    pub fn finish(&mut self) {
        if PROGRESS_ON_SCREEN.swap(false, Ordering::SeqCst) {
            let _ = writeln!(std::io::stderr());
        }
    }
}
