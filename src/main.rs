//! The `guard` binary: parse arguments, run, exit with a documented code.

use clap::Parser;

fn main() {
    // Rust's runtime already ignores SIGPIPE (writes to a closed pipe return EPIPE, which guard
    // ignores); say so here too, so nothing guard links can change it. Children get the
    // default disposition back (std resets it between fork and exec).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let cli = match guard::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                guard::error::Kind::Usage.exit_code()
            } else {
                0
            };
            match guard::cli::unknown_subcommand(&e) {
                Some(msg) => guard::ui::to_stderr(&msg),
                None => {
                    let _ = e.print();
                }
            }
            std::process::exit(code.into());
        }
    };
    std::process::exit(guard::run(cli).into());
}
