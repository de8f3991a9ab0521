//! Progress of the demo's phases: bars on a terminal, a plain line per tenth
//! otherwise (CI logs, pipes), so the output reads well in both.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    total: u64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn start(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg:<24} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        if bar.is_none() {
            eprintln!("{label}: 0/{total}");
        }
        Progress {
            inner: Arc::new(Inner {
                label: label.to_string(),
                total,
                done: AtomicU64::new(0),
                bar,
            }),
        }
    }

    pub fn advance(&self) {
        let done = self.inner.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.inner.bar {
            Some(bar) => bar.inc(1),
            None => {
                let tenth = (self.inner.total / 10).max(1);
                if done.is_multiple_of(tenth) && done < self.inner.total {
                    eprintln!("{}: {done}/{}", self.inner.label, self.inner.total);
                }
            }
        }
    }

    pub fn finish(&self) {
        let done = self.inner.done.load(Ordering::Relaxed);
        match &self.inner.bar {
            Some(bar) => bar.finish(),
            None => eprintln!("{}: {done}/{} done", self.inner.label, self.inner.total),
        }
    }
}
