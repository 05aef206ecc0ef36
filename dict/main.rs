//! `ferry-dict`: trains a zstd compression dictionary on sample payloads (`train`), and says
//! what one is and what it saves on samples (`check`). The work is library code,
//! [`ferry_tunnel::compress::training`]; this binary reads its flags and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_tunnel::compress::{dictionary, training};

/// Makes and checks zstd dictionaries for `--compress zstd[:LEVEL]:dict=FILE`.
#[derive(Debug, Parser)]
#[command(name = "ferry-dict", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trains a dictionary on samples of the traffic it is for: each file a message (what one
    /// stream carries at its start), or with --lines each line of each file one.
    Train {
        /// Where to write the dictionary.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Most bytes the dictionary may take (bytes, KiB or MiB); about a hundredth of the
        /// samples' total is what zstd's trainer wants.
        #[arg(long, default_value = "64KiB", value_parser = training::parse_size)]
        size: usize,
        /// Each line of each sample file is a sample (captured messages, one per line).
        #[arg(long)]
        lines: bool,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// Sample files.
        #[arg(required = true, value_name = "SAMPLES")]
        samples: Vec<PathBuf>,
    },
    /// Says a dictionary's ID and size, and with samples what it saves on them: each sample
    /// compressed as a new stream's data, with and without it.
    Check {
        /// The dictionary.
        file: PathBuf,
        /// Sample files (optional).
        #[arg(value_name = "SAMPLES")]
        samples: Vec<PathBuf>,
        /// Each line of each sample file is a sample.
        #[arg(long)]
        lines: bool,
        /// The zstd level to measure at, as in --compress zstd:LEVEL.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        level: i32,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Train {
            out,
            size,
            lines,
            force,
            samples,
        } => train(&out, size, lines, force, &samples),
        Command::Check {
            file,
            samples,
            lines,
            level,
        } => check(&file, &samples, lines, level),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-dict: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn train(
    out: &std::path::Path,
    size: usize,
    lines: bool,
    force: bool,
    files: &[PathBuf],
) -> Result<(), String> {
    if out.exists() && !force {
        return Err(format!(
            "{} exists: give another --out, or --force to replace it",
            out.display()
        ));
    }
    let samples = training::Samples::read(files, lines).map_err(|e| e.to_string())?;
    let dict = training::train(&samples, size).map_err(|e| e.to_string())?;
    std::fs::write(out, &dict).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
        "{}: dictionary {:#010x}, {} bytes, trained on {} samples ({} bytes)",
        out.display(),
        dictionary::id_of(&dict).unwrap_or_default(),
        dict.len(),
        samples.count(),
        samples.bytes()
    );
    Ok(())
}

fn check(file: &std::path::Path, files: &[PathBuf], lines: bool, level: i32) -> Result<(), String> {
    let content = dictionary::read(file).map_err(|e| e.to_string())?;
    let origin = file.display().to_string();
    // Loading it as the binaries do is the check that it is usable.
    let loaded = dictionary::Dictionary::new(&content, &origin).map_err(|e| e.to_string())?;
    println!(
        "{origin}: dictionary {:#010x}, {} bytes",
        loaded.id(),
        loaded.len()
    );
    if files.is_empty() {
        return Ok(());
    }
    let samples = training::Samples::read(files, lines).map_err(|e| e.to_string())?;
    let report = training::check(&content, &origin, level, &samples).map_err(|e| e.to_string())?;
    println!("{report}");
    Ok(())
}
