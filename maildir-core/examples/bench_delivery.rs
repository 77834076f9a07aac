//! Deliveries per second of 4 KiB messages into a Maildir, in one run:
//! no fsync, fsync per message (`Delivery::commit(Fsync)`), and batch commits of 64
//! (`Maildir::commit_batch(Fsync)`: fdatasync(2) of each file from parallel threads, then one
//! directory fsync). For comparison it also measures a batch made durable by one syncfs(2)
//! (written with plain `std::fs` here, not part of the library).
//!
//! Usage: `cargo run --release -p maildir-core --example bench_delivery -- DIR [SCALE]`
//! DIR must not exist yet: each mode gets a fresh Maildir under it (on ext4, creating files
//! right after deleting many runs slowly for a while). SCALE multiplies the message counts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use maildir_core::{Durability, Envelope, ForwardPath, Maildir, ReversePath};

const SIZE: usize = 4096;
const BATCH: usize = 64;

/// One 4 KiB queued message: envelope, trace header, headers, body.
fn message() -> Vec<u8> {
    let envelope = Envelope {
        sender: ReversePath::parse("<bench@example.org>").expect("valid"),
        recipients: vec![ForwardPath::parse("<rcpt@example.net>").expect("valid")],
        ret: None,
        envid: None,
        rcpt_dsn: Vec::new(),
    };
    let mut m = envelope.to_bytes();
    m.extend_from_slice(
        b"Received: from client (client [192.0.2.1]) by bench with ESMTP id X; Tue, 24 Nov 2026 04:07:30 +0000\r\nSubject: bench\r\n\r\n",
    );
    while m.len() < SIZE {
        let line =
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
        let take = line.len().min(SIZE - m.len());
        m.extend_from_slice(&line[..take]);
    }
    m
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn no_fsync(md: &Maildir, msg: &[u8], n: usize) -> Result<()> {
    for _ in 0..n {
        let mut d = md.deliver()?;
        d.write_all(msg)?;
        d.commit(Durability::NoFsync)?;
    }
    Ok(())
}

fn fsync_each(md: &Maildir, msg: &[u8], n: usize) -> Result<()> {
    for _ in 0..n {
        let mut d = md.deliver()?;
        d.write_all(msg)?;
        d.commit(Durability::Fsync)?;
    }
    Ok(())
}

fn batch_commit(md: &Maildir, msg: &[u8], n: usize) -> Result<()> {
    for _ in 0..n / BATCH {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let mut d = md.deliver()?;
            d.write_all(msg)?;
            batch.push(d);
        }
        for r in md.commit_batch(batch, Durability::Fsync) {
            r?;
        }
    }
    Ok(())
}

/// The alternative: fdatasync each file of the batch from a few threads, rename all, fsync new/.
fn batch_syncfs(root: &Path, msg: &[u8], n: usize) -> Result<()> {
    let (tmp, new) = (root.join("tmp"), root.join("new"));
    for d in [&tmp, &new, &root.join("cur")] {
        fs::create_dir_all(d)?;
    }
    let mut seq = 0u64;
    for _ in 0..n / BATCH {
        let mut files: Vec<(File, PathBuf, PathBuf)> = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            seq += 1;
            let name = format!("{seq}.bench");
            let path = tmp.join(&name);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(msg)?;
            files.push((f, path, new.join(format!("{name},S={}", msg.len()))));
        }
        // SAFETY: syncfs takes a valid open descriptor, which the first file holds.
        if unsafe { libc::syncfs(files[0].0.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        for (_, from, to) in &files {
            fs::rename(from, to)?;
        }
        File::open(&new)?.sync_all()?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: bench_delivery DIR [SCALE]   (DIR must not exist)");
        return ExitCode::from(2);
    };
    let scale: usize = match args.next().map(|s| s.to_string_lossy().parse()) {
        None => 1,
        Some(Ok(s)) if s > 0 => s,
        Some(_) => {
            eprintln!("SCALE must be a positive integer");
            return ExitCode::from(2);
        }
    };
    match run(&dir, scale) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_delivery: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, scale: usize) -> Result<()> {
    if dir.exists() {
        return Err(format!("{} exists; give a fresh directory name", dir.display()).into());
    }
    let msg = message();
    let mut rows: Vec<(&str, usize, f64)> = Vec::new();
    let mut timed =
        |label: &'static str, n: usize, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
            let root = dir.join(label.split_whitespace().next().unwrap_or("x"));
            let start = Instant::now();
            f(&root)?;
            let secs = start.elapsed().as_secs_f64();
            let count = fs::read_dir(root.join("new"))?.count();
            if count != n {
                return Err(format!("{label}: {count} files in new/, expected {n}").into());
            }
            rows.push((label, n, secs));
            Ok(())
        };
    timed("nofsync (commit NoFsync)", 20_000 * scale, &|r| {
        no_fsync(&Maildir::open(r)?, &msg, 20_000 * scale)
    })?;
    timed("fsync (commit Fsync, 1/msg)", 2_000 * scale, &|r| {
        fsync_each(&Maildir::open(r)?, &msg, 2_000 * scale)
    })?;
    timed(
        "batch64 (commit_batch Fsync, parallel fdatasync)",
        64 * 150 * scale,
        &|r| batch_commit(&Maildir::open(r)?, &msg, 64 * 150 * scale),
    )?;
    timed(
        "syncfs64 (one syncfs per batch, not in the API)",
        64 * 150 * scale,
        &|r| batch_syncfs(r, &msg, 64 * 150 * scale),
    )?;
    let rate = |(_, n, secs): &(&str, usize, f64)| *n as f64 / secs;
    let per_msg = rows.get(1).map(rate).unwrap_or(1.0);
    println!("4 KiB messages, one thread delivering, {}", dir.display());
    println!();
    println!("| mode | messages | seconds | msg/s | × fsync per message |");
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} |",
            row.0,
            row.1,
            row.2,
            rate(row),
            rate(row) / per_msg
        );
    }
    Ok(())
}
