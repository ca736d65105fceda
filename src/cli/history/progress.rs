//! A progress bar on stderr while the archive is read, only when stderr
//! is a terminal and there is enough to read for it to help.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::cli::output;

/// Reading fewer objects than this is over before a bar would help.
pub const MIN_OBJECTS: usize = 8;
/// Redraws at most this often.
const REDRAW: Duration = Duration::from_millis(100);
const WIDTH: usize = 24;

/// Draws `[#####-----] 120/480 objects, 12MiB/40MiB, 7 matches`.
pub struct Progress {
    out: Option<Box<dyn Write + Send>>,
    total: usize,
    total_bytes: u64,
    drawn: Option<Instant>,
}

impl Progress {
    /// A bar on stderr when it is a terminal.
    pub fn stderr() -> Self {
        let stderr = std::io::stderr();
        let out: Option<Box<dyn Write + Send>> = if stderr.is_terminal() {
            Some(Box::new(stderr))
        } else {
            None
        };
        Self::to(out)
    }

    /// A bar drawn to `out`; none when `out` is None.
    pub fn to(out: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            out,
            total: 0,
            total_bytes: 0,
            drawn: None,
        }
    }

    /// Reading `objects` objects of `bytes` bytes starts; below
    /// [`MIN_OBJECTS`] no bar is drawn.
    pub fn start(&mut self, objects: usize, bytes: u64) {
        self.total = objects;
        self.total_bytes = bytes;
        if objects < MIN_OBJECTS {
            self.out = None;
        }
        self.draw(0, 0, 0, true);
    }

    /// `done` objects of `bytes` bytes are read, with `matches` so far.
    pub fn advance(&mut self, done: usize, bytes: u64, matches: u64) {
        self.draw(done, bytes, matches, done == self.total);
    }

    fn draw(&mut self, done: usize, bytes: u64, matches: u64, always: bool) {
        if !always && self.drawn.is_some_and(|at| at.elapsed() < REDRAW) {
            return;
        }
        let Some(out) = &mut self.out else {
            return;
        };
        self.drawn = Some(Instant::now());
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
        let matches = match matches {
            1 => "1 match".to_owned(),
            n => format!("{n} matches"),
        };
        // Carriage return and erase the line: the bar redraws in place.
        let _ = write!(
            out,
            "\r\x1b[2Kreading the archive [{bar}] {done}/{} objects, {}/{}, {matches}",
            self.total,
            output::bytes(bytes),
            output::bytes(self.total_bytes),
        );
        let _ = out.flush();
    }

    /// Erases the bar, so only results remain.
    pub fn finish(&mut self) {
        if let Some(out) = &mut self.out {
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
        self.out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<Vec<u8>>>);

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Screen {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn the_bar_counts_objects_and_is_erased_at_the_end() {
        let screen = Screen::default();
        let mut progress = Progress::to(Some(Box::new(screen.clone())));
        progress.start(10, 10 << 20);
        progress.advance(10, 10 << 20, 1);
        progress.finish();
        let text = screen.text();
        assert!(
            text.contains("[------------------------] 0/10 objects"),
            "{text:?}"
        );
        assert!(
            text.contains("[########################] 10/10 objects, 10MiB/10MiB, 1 match"),
            "{text:?}"
        );
        assert!(text.ends_with("\r\x1b[2K"), "{text:?}");
    }

    #[test]
    fn a_few_objects_get_no_bar() {
        let screen = Screen::default();
        let mut progress = Progress::to(Some(Box::new(screen.clone())));
        progress.start(MIN_OBJECTS - 1, 100);
        progress.advance(MIN_OBJECTS - 1, 100, 0);
        progress.finish();
        assert_eq!(screen.text(), "");
    }
}
