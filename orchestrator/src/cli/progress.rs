//! Progress of containers while `up`/`down`/`scale` wait: spinners on a terminal (indicatif),
//! one plain line per change otherwise (CI logs, pipes). A terminal shows a line per container
//! while they fit on a screen, then a line per service with its containers counted by state:
//! a spinner for each of 1,000 replicas would scroll away and redraw thousands of lines 8 times
//! a second.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_proto::v1 as pb;

use super::converge::{describe, state_word};

/// More containers than this are shown a line per service.
const MAX_CONTAINER_LINES: usize = 24;

pub struct Progress {
    bars: Option<Bars>,
    /// Each container's last shown text.
    last: BTreeMap<String, String>,
    tally: ServiceTally,
}

struct Bars {
    multi: MultiProgress,
    /// By container name, or by service name once grouped.
    lines: BTreeMap<String, ProgressBar>,
    grouped: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        let bars = std::io::stderr().is_terminal().then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            lines: BTreeMap::new(),
            grouped: false,
        });
        Progress { bars, last: BTreeMap::new(), tally: ServiceTally::default() }
    }

    /// Shows the task's current status if it changed.
    pub fn update(&mut self, task: &pb::Task) {
        let name =
            if task.container_name.is_empty() { format!("task {}", task.id) } else { task.container_name.clone() };
        let text = describe(task);
        if self.last.get(&name) == Some(&text) {
            return;
        }
        self.last.insert(name.clone(), text.clone());
        let Some(bars) = &mut self.bars else {
            // Formatted first and written at once: stderr is unbuffered, and a padded format
            // writes piece by piece (a system call per padding character; at 20,000 containers
            // that cost `up` almost half a core).
            let _ = std::io::stderr().write_all(format!("{name:<28} {text}\n").as_bytes());
            return;
        };
        let service = task.service.as_ref().map(|s| s.service.clone()).unwrap_or_default();
        self.tally.set(&name, &service, &state_word(task));
        if !bars.grouped && self.last.len() > MAX_CONTAINER_LINES {
            bars.grouped = true;
            for (_, bar) in std::mem::take(&mut bars.lines) {
                bar.finish_and_clear();
            }
            for service in self.tally.services() {
                let summary = self.tally.summary(&service);
                bars.line(&service).set_message(summary);
            }
            return;
        }
        if bars.grouped {
            let summary = self.tally.summary(&service);
            bars.line(&service).set_message(summary);
        } else {
            bars.line(&name).set_message(text);
        }
    }

    pub fn finish(self) {
        if let Some(bars) = self.bars {
            for bar in bars.lines.values() {
                bar.finish();
            }
        }
    }
}

impl Bars {
    fn line(&mut self, key: &str) -> &ProgressBar {
        let multi = &self.multi;
        self.lines.entry(key.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<28} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(key.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }
}

/// Containers per service counted by state word (`running`, `starting`, `exited (0)`), kept up
/// to date change by change, so a summary costs the number of distinct states, not containers.
#[derive(Debug, Default)]
struct ServiceTally {
    /// Each container's service and state word.
    containers: BTreeMap<String, (String, String)>,
    counts: BTreeMap<String, BTreeMap<String, usize>>,
}

impl ServiceTally {
    fn set(&mut self, container: &str, service: &str, word: &str) {
        let entry = (service.to_string(), word.to_string());
        if let Some((old_service, old_word)) = self.containers.insert(container.to_string(), entry) {
            if let Some(words) = self.counts.get_mut(&old_service) {
                if let Some(n) = words.get_mut(&old_word) {
                    *n -= 1;
                    if *n == 0 {
                        words.remove(&old_word);
                    }
                }
            }
        }
        *self.counts.entry(service.to_string()).or_default().entry(word.to_string()).or_default() += 1;
    }

    fn services(&self) -> Vec<String> {
        self.counts.keys().cloned().collect()
    }

    /// `1000 containers: 812 running, 150 starting, 38 pending`, most common state first.
    fn summary(&self, service: &str) -> String {
        let Some(words) = self.counts.get(service) else { return String::new() };
        let total: usize = words.values().sum();
        let mut by_count: Vec<(&String, &usize)> = words.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let states: Vec<String> = by_count.iter().map(|(word, n)| format!("{n} {word}")).collect();
        let noun = if total == 1 { "container" } else { "containers" };
        format!("{total} {noun}: {}", states.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_summary_counts_each_container_once_in_its_latest_state() {
        let mut tally = ServiceTally::default();
        for i in 0..5 {
            tally.set(&format!("web-{i}"), "web", "pending");
        }
        tally.set("db-1", "db", "starting");
        for i in 0..3 {
            tally.set(&format!("web-{i}"), "web", "running");
        }
        tally.set("web-4", "web", "exited (1)");
        assert_eq!(tally.summary("web"), "5 containers: 3 running, 1 exited (1), 1 pending");
        tally.set("db-1", "db", "running");
        assert_eq!(tally.summary("db"), "1 container: 1 running");
        assert_eq!(tally.services(), vec!["db".to_string(), "web".to_string()]);
        assert_eq!(tally.summary("cache"), "");
    }
}
