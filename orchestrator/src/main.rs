//! The `shoal` binary: parse the command line, set up logging, run the verb.

use clap::Parser;
use shoal_orchestrator::cli::{self, Cli};

/// `shoal ps | head`: when the reader of our output goes away, end like other Unix tools (exit
/// status 141, no message) rather than with a panic report from `println!`. SIGPIPE itself stays
/// ignored: writes to closed sockets (the engine, a manager) must remain ordinary errors.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// jemalloc, not glibc's malloc. A leader at 10,000 simulated nodes and 100,000 tasks used 40%
/// less CPU with it (36 -> 24-25 s over the run) and peaked lower (344 -> 303-324 MiB), mostly
/// because glibc kept ~95 MB of freed memory in its arenas that it could not give back
/// (docs/benchmarks.md, "Eighth session").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start; `_RJEM_MALLOC_CONF` in the environment overrides
/// them. Freed pages go back to the system within about a second, from a background thread
/// rather than from whichever thread frees; two arenas, since a manager's threads mostly
/// allocate one at a time and every further arena holds memory of its own.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";

fn main() {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
