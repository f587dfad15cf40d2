//! Bridges raft-rs's `slog` records to `tracing` (target `shoal::raft`), so nothing is printed
//! unless the process's tracing subscriber asks for it. raft-rs logs every election and role change
//! at slog `Info`; those become `debug` events here so that the CLI's default level stays quiet.

use std::fmt::Write as _;

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

pub(crate) fn logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("raft_id" => node_id))
}

struct TracingDrain;

struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => tracing::Level::ERROR,
            Level::Warning => tracing::Level::WARN,
            Level::Info => tracing::Level::DEBUG,
            Level::Debug | Level::Trace => tracing::Level::TRACE,
        };
        // Formatting is skipped entirely when nothing listens at that level.
        let enabled = match level {
            tracing::Level::ERROR => tracing::enabled!(target: "shoal::raft", tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(target: "shoal::raft", tracing::Level::WARN),
            tracing::Level::DEBUG => tracing::enabled!(target: "shoal::raft", tracing::Level::DEBUG),
            _ => tracing::enabled!(target: "shoal::raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let kv = kv.0;
        match level {
            tracing::Level::ERROR => tracing::error!(target: "shoal::raft", "{msg}{kv}"),
            tracing::Level::WARN => tracing::warn!(target: "shoal::raft", "{msg}{kv}"),
            tracing::Level::DEBUG => tracing::debug!(target: "shoal::raft", "{msg}{kv}"),
            _ => tracing::trace!(target: "shoal::raft", "{msg}{kv}"),
        }
        Ok(())
    }
}
