//! The environment variables: `bulk-export env` describes each (from the configuration's table,
//! `shared::config::table`), and each command's --help names those it reads.

use std::io::Write;
use std::process::ExitCode;

use shared::config::table::SETTINGS;

#[derive(clap::Args)]
pub struct Args {
    /// Print README.md's table of environment variables (markdown) instead.
    #[arg(long)]
    markdown: bool,
}

/// `bulk-export env`: every variable with its default and meaning.
pub fn run(args: Args) -> ExitCode {
    let text = if args.markdown {
        shared::config::table::markdown()
    } else {
        shared::config::table::plain_text(96)
            + "NO_COLOR  (none)\n    set: log lines without colours\n"
    };
    // `bulk-export env | head` closes stdout early: not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// The --help of the commands that only use the database.
pub const DATABASE: &str = "Environment (`bulk-export env` describes each, with its default):
  DATABASE_URL  Postgres URL (required), e.g. postgres://user:pass@127.0.0.1:5432/fhir_bulk;
                TLS: ?sslmode=require|verify-ca|verify-full&sslrootcert=/path/ca.pem
  DATABASE_SECRET  or: a Secrets Manager secret ({\"username\", \"password\"}) whose
                credentials go into DATABASE_URL (then without a password), as in AWS
  DATABASE_POOL_SIZE, RUST_LOG, LOG_FORMAT=json, NO_COLOR";

/// `serve --help`'s list: every variable's name.
pub fn serve_help() -> String {
    let mut out =
        String::from("Environment (`bulk-export env` describes each, with its default):\n ");
    let mut width = 1;
    for s in SETTINGS {
        if width + s.name.len() + 2 > 96 {
            out.push_str("\n ");
            width = 1;
        }
        out.push(' ');
        out.push_str(s.name);
        out.push(',');
        width += s.name.len() + 2;
    }
    out.push_str(" NO_COLOR");
    out
}
