//! kvmtune's build tasks, run as `cargo xtask TASK` (the alias is in
//! `.cargo/config.toml`):
//!
//! - `man DIR`: kvmtune(8), kvmtune-SUBCOMMAND(8) and kvmtune-policy(5) ([`docs`]);
//! - `completions DIR`: the bash and zsh completions ([`docs`]);
//! - `cycles`: fails on a module import cycle in any crate ([`cycles`]).
//!
//! packaging/build.sh runs the first two; `.ci/run` runs the third. The tasks live
//! here, not in the hook binary, so the binary installed as a libvirt hook carries
//! no documentation generator and none of its dependencies.

mod cycles;
mod docs;
mod markdown;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

const USAGE: &str = "\
usage: cargo xtask TASK

tasks:
  man DIR          write kvmtune.8, kvmtune-SUBCOMMAND.8 and kvmtune-policy.5 into DIR
                   (dated SOURCE_DATE_EPOCH if set, else today)
  completions DIR  write the bash (kvmtune.bash) and zsh (_kvmtune) completions into DIR
  cycles           fail (exit 1) on a module import cycle in any crate of the workspace
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        [] | ["help" | "-h" | "--help"] => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        ["man", dir] => print_paths(docs::write_man_pages(Path::new(dir), &docs::man_date())),
        ["completions", dir] => print_paths(docs::write_completions(Path::new(dir))),
        ["cycles"] => cycles(),
        _ => {
            eprint!(
                "xtask: unknown task or arguments: {}\n\n{USAGE}",
                args.join(" ")
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the files written, one per line.
fn print_paths(written: Result<Vec<PathBuf>>) -> Result<ExitCode> {
    for path in written? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn cycles() -> Result<ExitCode> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(".."));
    let report = cycles::check_workspace(root)?;
    if report.cycles.is_empty() {
        println!(
            "{} crates, {} modules, no import cycle",
            report.crates, report.modules
        );
        return Ok(ExitCode::SUCCESS);
    }
    for cycle in &report.cycles {
        println!("import cycle in {cycle}");
    }
    println!(
        "{} crates, {} modules, {} import cycle(s)",
        report.crates,
        report.modules,
        report.cycles.len()
    );
    Ok(ExitCode::FAILURE)
}
