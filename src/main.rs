//! The `kvmtune` binary: the admin's CLI, and the libvirt qemu hook when invoked as
//! `/etc/libvirt/hooks/qemu` (a symlink to this binary) or from `qemu.d/`.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use kvmtune::cli::{self, Cli};

fn main() -> ExitCode {
    // Lossy: `std::env::args` panics on a non-UTF-8 argument, and a panic here
    // would fail the guest start before the hook's error handling runs.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(argv0) = args.first()
        && kvmtune::hook::invoked_as_hook(Path::new(argv0))
    {
        return kvmtune::hook::run_as_libvirt_hook(&args[1..]);
    }
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, naming the file/guest/element; the exit code says what kind.
            eprintln!("kvmtune: {err:#}");
            ExitCode::from(kvmtune::exit::code_of(&err))
        }
    }
}
