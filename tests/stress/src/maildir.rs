//! The Maildir check: counting the files a server put in `DIR/new`.

use std::io;
use std::path::Path;

/// Regular files in `dir/new` (0 when it does not exist yet).
pub fn count_new(dir: &Path) -> io::Result<u64> {
    let new = dir.join("new");
    let entries = match std::fs::read_dir(&new) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in entries {
        if e?.file_type()?.is_file() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_only() {
        let base = std::env::temp_dir().join(format!("smtp-stress-md-{}", std::process::id()));
        assert_eq!(count_new(&base).unwrap(), 0);
        std::fs::create_dir_all(base.join("new/sub")).unwrap();
        std::fs::write(base.join("new/a"), b"x").unwrap();
        std::fs::write(base.join("new/b"), b"y").unwrap();
        assert_eq!(count_new(&base).unwrap(), 2);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
