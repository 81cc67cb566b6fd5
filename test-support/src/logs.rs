//! Log lines captured in memory, for tests that check what was logged (or that nothing
//! secret was).

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;

/// A `tracing_subscriber` writer into a shared buffer; clones write to the same buffer.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    /// JSON lines at `level` and above, captured on this thread until the guard drops.
    ///
    /// The lines come through one global subscriber, installed once per test binary, that
    /// routes each event to the capture of the thread that emits it. A subscriber set as the
    /// thread's default instead would race with the other tests' threads over tracing's global
    /// callsite interest and maximum level, and miss events now and then.
    pub fn json_on_this_thread(&self, level: tracing::Level) -> CaptureGuard {
        static ROUTER: std::sync::Once = std::sync::Once::new();
        ROUTER.call_once(|| {
            let router = tracing_subscriber::fmt()
                .json()
                .with_writer(Router)
                .with_max_level(tracing::Level::TRACE)
                .finish();
            tracing::subscriber::set_global_default(router).expect("no other global subscriber in a test binary");
        });
        let previous = CURRENT.with(|current| current.replace(Some((self.clone(), level))));
        CaptureGuard { previous }
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Every line written so far, parsed (for JSON logs).
    pub fn json_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")))
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_json_lines_until_cleared() {
        let logs = LogCapture::default();
        {
            let _guard = logs.json_on_this_thread(tracing::Level::INFO);
            tracing::info!(answer = 42, "hello");
            tracing::debug!("below the level");
        }
        tracing::info!("after the guard");
        let lines = logs.json_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            (
                lines[0]["fields"]["message"].as_str(),
                lines[0]["fields"]["answer"].as_u64()
            ),
            (Some("hello"), Some(42))
        );
        logs.clear();
        assert!(logs.text().is_empty());
    }
}

thread_local! {
    /// The capture (and its level) of the thread's current [`LogCapture::json_on_this_thread`].
    static CURRENT: std::cell::RefCell<Option<(LogCapture, tracing::Level)>> = const { std::cell::RefCell::new(None) };
}

/// Ends a [`LogCapture::json_on_this_thread`] capture when dropped.
#[must_use = "the capture ends when the guard drops"]
pub struct CaptureGuard {
    previous: Option<(LogCapture, tracing::Level)>,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| current.replace(previous));
    }
}

/// The global subscriber's writer: the emitting thread's capture, else nowhere.
struct Router;

impl<'a> MakeWriter<'a> for Router {
    type Writer = Box<dyn std::io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Box::new(std::io::sink())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let capture = CURRENT.with(|current| {
            current
                .borrow()
                .as_ref()
                .filter(|(_, level)| meta.level() <= level)
                .map(|(capture, _)| capture.clone())
        });
        match capture {
            Some(capture) => Box::new(capture),
            None => Box::new(std::io::sink()),
        }
    }
}
