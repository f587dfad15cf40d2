//! Progress of containers while `up`/`down`/`scale` wait: spinners on a terminal (indicatif),
//! one plain line per change otherwise (CI logs, pipes).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_proto::v1 as pb;

use super::converge::describe;

pub struct Progress {
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    last: BTreeMap<String, String>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), BTreeMap::new()));
        Progress { bars, last: BTreeMap::new() }
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
        match &mut self.bars {
            None => eprintln!("{name:<28} {text}"),
            Some((multi, bars)) => {
                let bar = bars.entry(name.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:<28} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(name.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(text);
            }
        }
    }

    pub fn finish(self) {
        if let Some((_, bars)) = self.bars {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }
}
