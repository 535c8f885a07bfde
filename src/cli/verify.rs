//! `lpl verify PATH`: checks every safetensors file under PATH (a run directory, a latent
//! cache, an autoencoder folder, or one file) against the SHA-256 of its tensors recorded
//! when lpl wrote it. lpl runs the same check whenever it reads one of these files
//! (checkpoints as they load, every shard when a cache is opened); this command checks a
//! whole directory at once, e.g. after copying it.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

/// Arguments of `lpl verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// A file, or a directory searched recursively for `.safetensors` files.
    path: PathBuf,
}

fn files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            files(&entry, out)?;
        } else if entry.extension().is_some_and(|e| e == "safetensors") {
            out.push(entry);
        }
    }
    Ok(())
}

/// Prints one line per file (`ok`, `no digest` or `DAMAGED`) and fails if any is damaged.
pub fn run(args: VerifyArgs) -> Result<()> {
    let mut found = Vec::new();
    files(&args.path, &mut found)?;
    if found.is_empty() {
        bail!("{}: no .safetensors file", args.path.display());
    }
    let mut damaged = 0;
    for file in &found {
        let recorded = lpl_tensor_io::read_metadata(file)
            .map(|m| m.contains_key(lpl_tensor_io::DIGEST_KEY))
            .unwrap_or(false);
        match lpl_tensor_io::verify(file) {
            Ok(()) if recorded => println!("ok         {}", file.display()),
            Ok(()) => println!(
                "no digest  {} (written elsewhere or before lpl recorded one)",
                file.display()
            ),
            Err(e) => {
                damaged += 1;
                println!("DAMAGED    {e}");
            }
        }
    }
    if damaged > 0 {
        bail!("{damaged} of {} file(s) damaged", found.len());
    }
    Ok(())
}
