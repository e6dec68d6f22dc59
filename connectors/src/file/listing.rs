//! Which files a `file` source reads, and in what order.
//!
//! `path` names one file, a directory, or a glob. As in Flink's filesystem
//! connector, a directory stands for every file under it, at any depth, and
//! entries whose names start with `.` or `_` are skipped (in-progress and
//! marker files such as `.part-….staged` or `_SUCCESS`, and whole directories
//! named so). A glob (`*` any part of a name, `?` one character, `[a-z]`,
//! `[!a-z]` a class, `**` any number of directories) reads what it matches;
//! a directory it matches reads as a directory would. Files are read in the
//! order of their paths, so every lane, and a query restored from a
//! checkpoint, lists the same files in the same order: a file's place in the
//! listing decides its lane, and its path names it in the checkpoint.
//!
//! Listing nothing is an error rather than an empty table: a misspelt
//! directory or a pattern that matches nothing would otherwise make a query
//! that silently reads no rows.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::io_error;
use crate::error::{ConnectorError, Result};

/// True if `path` is a glob: it holds `*`, `?` or `[`.
pub fn is_pattern(path: &Path) -> bool {
    path.to_string_lossy().contains(['*', '?', '['])
}

/// The files `path` names, sorted by path; an error if it names none.
pub fn list_files(path: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    if is_pattern(path) {
        let (base, parts) = split_pattern(path);
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let mut matches = Vec::new();
        expand(&base, &parts, &mut matches)?;
        for m in matches {
            add(&m, &mut files, &mut seen)?;
        }
    } else {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => path_error(path, "does not exist".into()),
            _ => io_error(path, e),
        })?;
        if meta.is_file() {
            return Ok(vec![path.to_path_buf()]);
        }
        add(path, &mut files, &mut seen)?;
    }
    if files.is_empty() {
        let what = if is_pattern(path) { "matches no files" } else { "is a directory without files" };
        return Err(path_error(path, format!("{what} (names starting with '.' or '_' are skipped)")));
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Checks at CREATE TABLE what can be checked of a source's `path` without
/// knowing whether the table will be read: a glob must match, and an existing
/// directory must hold files. A plain path that does not exist yet may be a
/// sink's output; reading it fails when the query is planned.
pub fn check_path(path: &Path) -> Result<()> {
    if is_pattern(path) || path.is_dir() {
        list_files(path)?;
    }
    Ok(())
}

/// The directory Hive partition directories are counted from (see
/// `crate::hive`): a directory itself, a glob's part before its first
/// wildcard, a single file's own directory (so it has no partitions).
pub fn root(path: &Path) -> PathBuf {
    if is_pattern(path) {
        let (base, _) = split_pattern(path);
        return if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    }
    if path.is_dir() {
        return path.to_path_buf();
    }
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `file`'s path below `root` with `/` between its parts (the whole path if
/// it is not below it).
pub fn relative(root: &Path, file: &Path) -> String {
    let below = file.strip_prefix(root).unwrap_or(file);
    below.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn path_error(path: &Path, reason: String) -> ConnectorError {
    ConnectorError::Option { connector: "file".into(), key: "path".into(), reason: format!("'{}' {reason}", path.display()) }
}

/// Whether an entry called `name` is skipped (Flink's hidden files).
fn hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// `path` if it is a file, or every file under it if it is a directory.
/// Directories already walked (reached again through a link) are not walked again.
fn add(path: &Path, files: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_file() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    if !meta.is_dir() || !seen.insert(std::fs::canonicalize(path).map_err(|e| io_error(path, e))?) {
        return Ok(());
    }
    for entry in read_dir(path)? {
        add(&entry, files, seen)?;
    }
    Ok(())
}

/// The entries of a directory that are not hidden.
fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        if !hidden(&entry.file_name().to_string_lossy()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// The directory before the first component holding a wildcard, and the
/// components from there on.
fn split_pattern(path: &Path) -> (PathBuf, Vec<String>) {
    let mut base = PathBuf::new();
    let mut parts = Vec::new();
    for component in path.components() {
        let text = component.as_os_str().to_string_lossy().to_string();
        if parts.is_empty() && !text.contains(['*', '?', '[']) {
            base.push(component);
        } else {
            parts.push(text);
        }
    }
    (base, parts)
}

/// Every existing path under `dir` that `parts` (one pattern per component) match.
fn expand(dir: &Path, parts: &[String], out: &mut Vec<PathBuf>) -> Result<()> {
    let Some((part, rest)) = parts.split_first() else {
        out.push(dir.to_path_buf());
        return Ok(());
    };
    if part == "**" {
        // Zero directories, then one more level and `**` again.
        expand(dir, rest, out)?;
        for entry in read_dir(dir)? {
            if entry.is_dir() {
                expand(&entry, parts, out)?;
            }
        }
        return Ok(());
    }
    if !part.contains(['*', '?', '[']) {
        let next = dir.join(part);
        if next.exists() {
            expand(&next, rest, out)?;
        }
        return Ok(());
    }
    if !dir.is_dir() {
        return Ok(());
    }
    // A hidden name matches only a pattern that spells its leading character.
    let explicit = part.starts_with(['.', '_']);
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if (explicit || !hidden(&name)) && wildcard_match(part, &name) {
            expand(&entry.path(), rest, out)?;
        }
    }
    Ok(())
}

/// Whether `name` matches the one-component pattern `pattern`.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Where the last `*` was, and the name position it now covers up to:
    // on a mismatch, that `*` takes one more character.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => class_match(&p[pi..], n[ni]),
            Some(c) if *c == n[ni] => Some(1),
            _ => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// If `pattern` starts with a class `[...]` holding `c`, the class's length.
/// An unclosed `[` is a literal character.
fn class_match(pattern: &[char], c: char) -> Option<usize> {
    let Some(end) = pattern.iter().skip(2).position(|x| *x == ']').map(|i| i + 2) else {
        return (c == '[').then_some(1);
    };
    let body = &pattern[1..end];
    let (negated, body) = match body.first() {
        Some('!') | Some('^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut found = false;
    let mut i = 0;
    while i < body.len() {
        if i + 2 < body.len() && body[i + 1] == '-' {
            found |= body[i] <= c && c <= body[i + 2];
            i += 3;
        } else {
            found |= body[i] == c;
            i += 1;
        }
    }
    (found != negated).then_some(end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn wildcards_match_within_a_name() {
        for (pattern, name) in [
            ("*.json", "a.json"),
            ("*", "x"),
            ("a?c", "abc"),
            ("part-[0-9]*", "part-7.csv"),
            ("[!_]*.csv", "x.csv"),
            ("*a*b*", "xxaxxbxx"),
            ("[x", "[x"),
        ] {
            assert!(wildcard_match(pattern, name), "{pattern} should match {name}");
        }
        for (pattern, name) in [("*.json", "a.csv"), ("a?c", "ac"), ("part-[0-9]*", "part-x"), ("[!x]", "x"), ("*a*b", "ba")] {
            assert!(!wildcard_match(pattern, name), "{pattern} should not match {name}");
        }
    }

    fn names(dir: &Path, files: &[PathBuf]) -> Vec<String> {
        files.iter().map(|f| f.strip_prefix(dir).unwrap_or(f).display().to_string()).collect()
    }

    #[test]
    fn directories_are_read_whole_and_globs_by_what_they_match() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        for f in ["b.json", "a.json", "sub/c.json", "sub/deep/d.csv", ".hidden.json", "_SUCCESS", "_tmp/e.json", "sub/.f.json"] {
            let path = d.join(f);
            std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
            std::fs::write(path, "")?;
        }
        assert_eq!(names(d, &list_files(d)?), ["a.json", "b.json", "sub/c.json", "sub/deep/d.csv"]);
        assert_eq!(names(d, &list_files(&d.join("*.json"))?), ["a.json", "b.json"]);
        assert_eq!(names(d, &list_files(&d.join("**/*.json"))?), ["a.json", "b.json", "sub/c.json"]);
        assert_eq!(names(d, &list_files(&d.join("s*"))?), ["sub/c.json", "sub/deep/d.csv"]);
        assert_eq!(names(d, &list_files(&d.join("_*"))?), ["_SUCCESS", "_tmp/e.json"]);
        assert_eq!(names(d, &list_files(&d.join("a.json"))?), ["a.json"]);
        assert_eq!(root(&d.join("s*/*.json")), d);
        assert_eq!(root(&d.join("sub")), d.join("sub"));
        assert_eq!(root(&d.join("a.json")), d);
        assert_eq!(relative(d, &d.join("sub/deep/d.csv")), "sub/deep/d.csv");
        Ok(())
    }

    #[test]
    fn listing_nothing_is_an_error_naming_the_path() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("_SUCCESS"), "")?;
        let error = |p: PathBuf| list_files(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error(dir.path().join("*.json")).contains("matches no files"));
        assert!(error(dir.path().join("missing/*.json")).contains("matches no files"));
        assert!(error(dir.path().to_path_buf()).contains("is a directory without files"));
        assert!(error(dir.path().join("missing.json")).contains("does not exist"));
        assert!(check_path(&dir.path().join("*.json")).is_err());
        assert!(check_path(&dir.path().join("out.json")).is_ok(), "may be a sink's output");
        Ok(())
    }
}
