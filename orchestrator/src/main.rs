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

/// glibc gives threads that allocate at the same time arenas of their own, up to 8 per core, and
/// memory freed in one arena is not used by another: a manager's runtime and blocking threads
/// kept a fifth of its RSS in half-empty arenas (leader at 10,000 simulated nodes and 20,000
/// tasks: 310–364 MiB peak with the default, 260 MiB with two arenas; docs/benchmarks.md). Two
/// arenas, unless the user chose with `MALLOC_ARENA_MAX`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tunable; it is called before any other thread
        // exists, and M_ARENA_MAX with a positive value is a documented setting.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() {
    limit_malloc_arenas();
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
