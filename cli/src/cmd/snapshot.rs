//! `switchyard snapshot save FILE`: a backup of the cluster's state, checked before it is
//! written, and written so that FILE is either the old file or the whole new one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use switchyard_control::backup::Backup;
use switchyard_proto::v1::SaveSnapshotRequest;

use super::ctx::Ctx;
use crate::args::SnapshotCmd;

pub(super) async fn run(ctx: &mut Ctx, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Save { file } => {
            let r = ctx.membership(SaveSnapshotRequest {}, |mut c, r| async move { c.save_snapshot(r).await }).await?;
            // The node framed it; checking here catches a transfer gone wrong before the
            // file is trusted as a backup.
            let b = Backup::decode(&r.file).context("the node sent a backup that does not check out")?;
            write_atomically(&file, &r.file)?;
            ctx.out.backup_saved(&file, b.revision, r.file.len(), &Backup::checksum(&r.file));
            Ok(())
        }
    }
}

/// Writes a 0600 temp file beside `path`, syncs it, renames it over `path` and syncs the
/// directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("cannot write {}", path.display()))
}
