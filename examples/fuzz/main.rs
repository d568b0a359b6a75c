//! Fuzzing on the stable toolchain: structure-aware mutation of valid inputs for pilip's parsers (extended XYZ,
//! TOML config), its model loader, and the two compute entry points of the C ABI.
//!
//! ```text
//! cargo run --release --example fuzz -- [--seconds S | --inputs N] [--seed SEED] [--out DIR] TARGET...
//! cargo run --release --example fuzz -- --replay TARGET FILE...
//! ```
//! TARGET is one of extxyz, config, model, compute, neighbors, or all. The supervisor runs each target in a
//! child process (`--worker`), so an abort (e.g. a failed allocation) or a hang is seen, not suffered: the
//! child is restarted after the input that killed it, which is found by replaying the inputs since the child's
//! last progress report one by one (inputs are a pure function of target, seed and index) and saved to
//! `DIR/<target>-<kind>-<seed>-<index>.bin`. Panics and other findings (`targets.rs`) are saved the same way.
//! The last line is a JSON summary; the exit status is 1 when anything was found.

#[path = "../../tests/common/mod.rs"]
mod common;
mod mutate;
mod targets;

use std::io::{BufRead, BufReader, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use targets::{Outcome, Target, NAMES};

/// A child that reports no progress for this long is hung.
const HANG: Duration = Duration::from_secs(30);
/// Progress reports per child, once every this many inputs (and at the end).
const REPORT_EVERY: u64 = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fuzz: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<i32, String> {
    let mut seconds = None;
    let mut inputs = None;
    let mut seed = 1u64;
    let mut out = PathBuf::from("target/fuzz");
    let mut names = Vec::new();
    let mut it = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<u64, String> {
        v.and_then(|s| s.parse().ok()).ok_or_else(|| format!("{what} needs a non-negative integer"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--worker" => {
                let name = it.next().ok_or("--worker needs a target")?;
                let seed = number(it.next(), "--worker seed")?;
                let from = number(it.next(), "--worker from")?;
                let count = number(it.next(), "--worker count")?;
                let every = number(it.next(), "--worker report interval")?;
                let out = PathBuf::from(it.next().ok_or("--worker needs an output folder")?);
                return worker(name, seed, from, count, every, &out);
            }
            "--replay" => {
                let name = it.next().ok_or("--replay needs a target")?;
                return replay(name, it.map(PathBuf::from).collect());
            }
            "--seconds" => seconds = Some(number(it.next(), "--seconds")?),
            "--inputs" => inputs = Some(number(it.next(), "--inputs")?),
            "--seed" => seed = number(it.next(), "--seed")?,
            "--out" => out = PathBuf::from(it.next().ok_or("--out needs a folder")?),
            "all" => names.extend(NAMES.iter().map(|s| s.to_string())),
            name if NAMES.contains(&name) => names.push(name.to_string()),
            other => return Err(format!("unknown argument '{other}'; targets: {}, all", NAMES.join(", "))),
        }
    }
    if names.is_empty() {
        return Err(format!("name at least one target: {}, all", NAMES.join(", ")));
    }
    let budget = match (seconds, inputs) {
        (Some(s), None) => Budget::Seconds(s),
        (None, Some(n)) => Budget::Inputs(n),
        (None, None) => Budget::Inputs(1000),
        _ => return Err("give --seconds or --inputs, not both".into()),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut found = 0;
    for name in &names {
        let s = supervise(name, seed, budget, &out)?;
        found += s.panics + s.aborts + s.hangs + s.other;
        println!(
            "{{\"target\": \"{name}\", \"seed\": {seed}, \"inputs\": {}, \"accepted\": {}, \"refused\": {}, \"panics\": {}, \
             \"aborts\": {}, \"hangs\": {}, \"other_findings\": {}, \"seconds\": {:.1}}}",
            s.inputs, s.accepted, s.refused, s.panics, s.aborts, s.hangs, s.other, s.seconds
        );
    }
    Ok(if found == 0 { 0 } else { 1 })
}

#[derive(Clone, Copy)]
enum Budget {
    Seconds(u64),
    Inputs(u64),
}

#[derive(Default)]
struct Summary {
    inputs: u64,
    accepted: u64,
    refused: u64,
    panics: u64,
    aborts: u64,
    hangs: u64,
    other: u64,
    seconds: f64,
}

/// What a child reported before it ended.
enum ChildEnd {
    /// Finished its range; counts of accepted and refused inputs.
    Done,
    /// Died (signal or exit status) or hung after `next` was the first unreported input.
    Died { hung: bool, status: String },
}

/// One child on inputs `from..from + count`: `next` is the first input not yet reported done.
fn child(name: &str, seed: u64, from: u64, count: u64, every: u64, out: &Path, s: &mut Summary, next: &mut u64) -> Result<ChildEnd, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--worker", name, &seed.to_string(), &from.to_string(), &count.to_string(), &every.to_string()])
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a worker: {e}"))?;
    let stdout = child.stdout.take().ok_or("no worker stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    *next = from;
    loop {
        match rx.recv_timeout(HANG) {
            Ok(line) => {
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["progress", upto, acc, refd] => {
                        let (upto, acc, refd): (u64, u64, u64) =
                            (upto.parse().unwrap_or(*next), acc.parse().unwrap_or(0), refd.parse().unwrap_or(0));
                        s.inputs += upto - *next;
                        s.accepted += acc;
                        s.refused += refd;
                        *next = upto;
                    }
                    ["finding", kind, ..] => {
                        eprintln!("{line}");
                        if *kind == "panic" {
                            s.panics += 1;
                        } else {
                            s.other += 1;
                        }
                    }
                    _ => eprintln!("worker: {line}"),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(ChildEnd::Died { hung: true, status: format!("no progress for {} s", HANG.as_secs()) });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map_err(|e| e.to_string())?;
                return Ok(if status.success() && *next == from + count {
                    ChildEnd::Done
                } else {
                    ChildEnd::Died { hung: false, status: status.to_string() }
                });
            }
        }
    }
}

fn supervise(name: &str, seed: u64, budget: Budget, out: &Path) -> Result<Summary, String> {
    let start = Instant::now();
    let target = Target::new(name)?;
    let mut s = Summary::default();
    let mut next = 0u64;
    loop {
        let count = match budget {
            Budget::Inputs(n) if next >= n => break,
            Budget::Inputs(n) => (n - next).min(20_000),
            Budget::Seconds(t) if start.elapsed().as_secs() >= t => break,
            // Children live for a bounded number of inputs, so the supervisor checks the clock between them.
            Budget::Seconds(_) => 2_000,
        };
        let from = next;
        match child(name, seed, from, count, REPORT_EVERY, out, &mut s, &mut next)? {
            ChildEnd::Done => {}
            ChildEnd::Died { hung, status } => {
                // Replay the unreported inputs one per report to find the one that killed the child.
                let mut exact = next;
                let end = child(name, seed, next, from + count - next, 1, out, &mut s, &mut exact)?;
                let culprit = exact;
                match end {
                    ChildEnd::Done => {
                        eprintln!("fuzz {name}: a child ended with {status} but its inputs {next}.. replay cleanly (flaky?)");
                        s.other += 1;
                        next = exact;
                        continue;
                    }
                    ChildEnd::Died { hung: hung2, status: status2 } => {
                        let kind = if hung || hung2 { "hang" } else { "abort" };
                        let file = out.join(format!("{name}-{kind}-{seed}-{culprit}.bin"));
                        std::fs::write(&file, target.input(seed, culprit)).map_err(|e| format!("{}: {e}", file.display()))?;
                        eprintln!("finding {kind} input {culprit} ({status2}) saved to {}", file.display());
                        if kind == "hang" {
                            s.hangs += 1;
                        } else {
                            s.aborts += 1;
                        }
                        s.inputs += 1;
                        next = culprit + 1;
                    }
                }
            }
        }
    }
    s.seconds = start.elapsed().as_secs_f64();
    Ok(s)
}

/// The child: runs inputs `from..from + count`, reports progress, saves findings.
fn worker(name: &str, seed: u64, from: u64, count: u64, every: u64, out: &Path) -> Result<i32, String> {
    // Panics are caught per input and reported as findings; keep the default hook's message off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let target = Target::new(name)?;
    let mut stdout = std::io::stdout().lock();
    let (mut accepted, mut refused) = (0u64, 0u64);
    for i in from..from + count {
        let input = target.input(seed, i);
        let finding = match catch_unwind(AssertUnwindSafe(|| target.run(&input))) {
            Ok(Outcome::Accepted) => {
                accepted += 1;
                None
            }
            Ok(Outcome::Refused) => {
                refused += 1;
                None
            }
            Ok(Outcome::Finding(what)) => Some(("defect", what)),
            Err(p) => {
                let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                Some(("panic", what.unwrap_or_else(|| "unknown panic".into())))
            }
        };
        if let Some((kind, what)) = finding {
            let file = out.join(format!("{name}-{kind}-{seed}-{i}.bin"));
            std::fs::write(&file, &input).map_err(|e| format!("{}: {e}", file.display()))?;
            let _ = writeln!(stdout, "finding {kind} input {i}: {} (saved to {})", what.replace('\n', " "), file.display());
        }
        if (i + 1 - from) % every == 0 || i + 1 == from + count {
            let _ = writeln!(stdout, "progress {} {accepted} {refused}", i + 1);
            let _ = stdout.flush();
            accepted = 0;
            refused = 0;
        }
    }
    Ok(0)
}

/// Runs saved inputs in this process and prints what each did (a crash here is the crash to debug).
fn replay(name: &str, files: Vec<PathBuf>) -> Result<i32, String> {
    std::env::set_var("PILIP_FUZZ_VERBOSE", "1");
    let target = Target::new(name)?;
    let mut bad = 0;
    for f in files {
        let input = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let what = match target.run(&input) {
            Outcome::Accepted => "accepted".to_string(),
            Outcome::Refused => "refused with a message".to_string(),
            Outcome::Finding(w) => {
                bad += 1;
                format!("FINDING: {w}")
            }
        };
        println!("{}: {what}", f.display());
    }
    Ok(if bad == 0 { 0 } else { 1 })
}
