//! File-retention policies: which files to delete by age, by count and by
//! total size, and the directory walk that finds the candidates.
//!
//! The decision ([`Policy::select`]) is pure so it can be tested natively;
//! [`scan`] is the filesystem side and never follows symbolic links.

use std::fs;
use std::path::{Path, PathBuf};

/// A file that matched the pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// Retention rules; every one is optional and they combine: a file goes when
/// any rule says so.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Delete files older than this many milliseconds.
    pub max_age_ms: Option<i64>,
    /// Keep only this many of the newest files.
    pub keep_newest: Option<usize>,
    /// Delete the oldest of the remaining files until their total size is at
    /// most this many bytes.
    pub max_total_bytes: Option<u64>,
}

/// What [`Policy::select`] decided. Both lists are newest first.
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    pub delete: Vec<Candidate>,
    pub keep: Vec<Candidate>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.max_age_ms.is_none() && self.keep_newest.is_none() && self.max_total_bytes.is_none()
    }

    /// Splits `files` into those to delete and those to keep, as of `now_ms`.
    pub fn select(&self, mut files: Vec<Candidate>, now_ms: i64) -> Selection {
        // Newest first; the path breaks ties so the outcome is deterministic.
        files.sort_by(|a, b| {
            b.modified_ms
                .cmp(&a.modified_ms)
                .then_with(|| a.path.cmp(&b.path))
        });
        let mut selection = Selection::default();
        for (rank, file) in files.into_iter().enumerate() {
            let too_old = self
                .max_age_ms
                .is_some_and(|max| now_ms.saturating_sub(file.modified_ms) > max);
            let beyond_count = self.keep_newest.is_some_and(|n| rank >= n);
            if too_old || beyond_count {
                selection.delete.push(file);
            } else {
                selection.keep.push(file);
            }
        }
        if let Some(max_total) = self.max_total_bytes {
            let mut total: u64 = selection.keep.iter().map(|f| f.size).sum();
            while total > max_total {
                let Some(oldest) = selection.keep.pop() else {
                    break;
                };
                total -= oldest.size;
                let at = selection.delete.partition_point(|d| {
                    (d.modified_ms, &d.path) > (oldest.modified_ms, &oldest.path)
                });
                selection.delete.insert(at, oldest);
            }
        }
        selection
    }
}

/// How to find candidates.
#[derive(Debug, Clone)]
pub struct Scan {
    pub pattern: glob::Pattern,
    pub recursive: bool,
}

impl Scan {
    /// `pattern` is a glob matched against the file name, or against the
    /// path relative to the scanned directory when it contains a `/`.
    pub fn new(pattern: &str, recursive: bool) -> Result<Self, String> {
        let pattern = glob::Pattern::new(pattern)
            .map_err(|e| format!("bad glob pattern {pattern:?}: {e}"))?;
        Ok(Scan { pattern, recursive })
    }

    fn matches(&self, relative: &Path) -> bool {
        let text = relative.to_string_lossy();
        if self.pattern.as_str().contains('/') {
            self.pattern.matches(&text)
        } else {
            relative
                .file_name()
                .is_some_and(|name| self.pattern.matches(&name.to_string_lossy()))
        }
    }
}

/// Regular files under `dir` that match. Symbolic links are neither followed
/// nor returned, so nothing outside `dir` is ever a candidate.
pub fn scan(dir: &Path, rules: &Scan) -> std::io::Result<Vec<Candidate>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(dir.join(&relative))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let child = relative.join(entry.file_name());
            if kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                if rules.recursive {
                    pending.push(child);
                }
                continue;
            }
            if !kind.is_file() || !rules.matches(&child) {
                continue;
            }
            let meta = entry.metadata()?;
            found.push(Candidate {
                path: dir.join(&child),
                size: meta.len(),
                modified_ms: meta.modified().map(crate::time::millis).unwrap_or(0),
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::time::DAY_MS as DAY;
    const NOW: i64 = 100 * DAY;

    fn file(name: &str, age_days: i64, size: u64) -> Candidate {
        Candidate {
            path: PathBuf::from(name),
            size,
            modified_ms: NOW - age_days * DAY,
        }
    }

    fn names(files: &[Candidate]) -> Vec<&str> {
        files.iter().map(|f| f.path.to_str().unwrap()).collect()
    }

    fn sample() -> Vec<Candidate> {
        vec![
            file("d", 40, 100),
            file("a", 1, 100),
            file("c", 20, 100),
            file("b", 5, 100),
        ]
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let s = Policy::default().select(sample(), NOW);
        assert!(s.delete.is_empty());
        assert_eq!(names(&s.keep), ["a", "b", "c", "d"]);
    }

    #[test]
    fn age_deletes_only_older_files() {
        let policy = Policy {
            max_age_ms: Some(10 * DAY),
            ..Policy::default()
        };
        let s = policy.select(sample(), NOW);
        assert_eq!(names(&s.delete), ["c", "d"]);
        assert_eq!(names(&s.keep), ["a", "b"]);
    }

    #[test]
    fn a_file_exactly_at_the_age_limit_is_kept() {
        let policy = Policy {
            max_age_ms: Some(20 * DAY),
            ..Policy::default()
        };
        assert_eq!(names(&policy.select(sample(), NOW).delete), ["d"]);
    }

    #[test]
    fn count_keeps_the_newest() {
        let policy = Policy {
            keep_newest: Some(1),
            ..Policy::default()
        };
        let s = policy.select(sample(), NOW);
        assert_eq!(names(&s.keep), ["a"]);
        assert_eq!(names(&s.delete), ["b", "c", "d"]);
    }

    #[test]
    fn size_deletes_oldest_first_until_within_budget() {
        let policy = Policy {
            max_total_bytes: Some(250),
            ..Policy::default()
        };
        let s = policy.select(sample(), NOW);
        assert_eq!(names(&s.delete), ["c", "d"]);
        assert_eq!(names(&s.keep), ["a", "b"]);
    }

    #[test]
    fn size_budget_of_zero_deletes_everything() {
        let policy = Policy {
            max_total_bytes: Some(0),
            ..Policy::default()
        };
        assert_eq!(policy.select(sample(), NOW).keep.len(), 0);
    }

    #[test]
    fn rules_combine() {
        // Age removes d; count keeps a, b, c; size then removes c (b + a = 200).
        let policy = Policy {
            max_age_ms: Some(30 * DAY),
            keep_newest: Some(3),
            max_total_bytes: Some(200),
        };
        let s = policy.select(sample(), NOW);
        assert_eq!(names(&s.keep), ["a", "b"]);
        assert_eq!(names(&s.delete), ["c", "d"]);
    }

    #[test]
    fn ties_in_mtime_are_broken_by_path() {
        let files = vec![file("y", 1, 1), file("x", 1, 1), file("z", 1, 1)];
        let policy = Policy {
            keep_newest: Some(1),
            ..Policy::default()
        };
        assert_eq!(names(&policy.select(files, NOW).keep), ["x"]);
    }

    #[test]
    fn patterns_match_names_or_relative_paths() {
        let by_name = Scan::new("*.log", true).unwrap();
        assert!(by_name.matches(Path::new("sub/app.log")));
        assert!(!by_name.matches(Path::new("sub/app.txt")));
        let by_path = Scan::new("sub/*.log", true).unwrap();
        assert!(by_path.matches(Path::new("sub/app.log")));
        assert!(!by_path.matches(Path::new("other/app.log")));
        assert!(Scan::new("[", false).is_err());
    }
}
