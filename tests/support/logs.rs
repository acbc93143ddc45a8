//! A tracing subscriber that keeps every log line, for tests about what is logged.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A tracing subscriber that writes down every span and event with its fields, each
/// line starting with the name of the thread it came from.
#[derive(Default)]
struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    next_id: AtomicU64,
}

struct Fields(String);

impl Fields {
    fn new(what: std::fmt::Arguments<'_>) -> Self {
        let thread = std::thread::current();
        Fields(format!("[{}] {what}", thread.name().unwrap_or("?")))
    }
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Recorder {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields::new(format_args!("span {}", span.metadata().name()));
        span.record(&mut fields);
        self.push(fields.0);
        tracing::span::Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut fields = Fields::new(format_args!("record"));
        values.record(&mut fields);
        self.push(fields.0);
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields::new(format_args!("{} {}", meta.level(), meta.target()));
        event.record(&mut fields);
        self.push(fields.0);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// The lines of the process-wide recorder, installed on first use. Process-wide rather
/// than `with_default`: tracing caches each call site's interest when the site is first
/// hit, and a site first hit on another test's thread (which has no subscriber) would
/// stay silent for a thread-local one.
pub fn recorded() -> Arc<Mutex<Vec<String>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    Arc::clone(LINES.get_or_init(|| {
        let recorder = Recorder::default();
        let lines = Arc::clone(&recorder.lines);
        tracing::subscriber::set_global_default(recorder).expect("the only subscriber");
        lines
    }))
}

/// How many recorded lines contain every one of `parts`.
pub fn count(parts: &[&str]) -> usize {
    recorded()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .count()
}
