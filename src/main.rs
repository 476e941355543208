//! The `guard` binary: parse arguments, run, exit with a documented code.

use clap::Parser;

fn main() {
    let cli = match guard::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                guard::error::Kind::Usage.exit_code()
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code.into());
        }
    };
    std::process::exit(guard::run(cli).into());
}
