//! Making directory changes durable, shared by everything delivery keeps
//! on disk (the spool, the dead-letter, the id scope, API settings).
//!
//! An fsync of a file makes its bytes durable, not its name: a creation,
//! rename or removal is durable only once the directory holding it is
//! synced. One function, so each caller states only whether a failure
//! matters to it.

use std::fs::File;
use std::io;
use std::path::Path;

/// Makes file creations, renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
