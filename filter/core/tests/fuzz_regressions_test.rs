//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`)
//! through the same bodies the fuzz targets run (`marty_resilience_core::fuzzing`), so the
//! inputs the fuzzer found stay tested without a fuzzer or a nightly flag.

// Test code: a failed expectation is a panic with a message.
#![allow(clippy::panic, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use marty_resilience_core::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut replayed = 0;
    let mut broken = Vec::new();
    for (name, body) in TARGETS {
        for file in inputs(&fuzz_dir().join(kind).join(name)) {
            let data = fs::read(&file).expect("a readable fuzz input");
            if let Err(e) = body(&data) {
                broken.push(format!("{}: {e}", file.display()));
            }
            replayed += 1;
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    replayed
}

#[test]
fn every_committed_corpus_input_passes_its_target() {
    // The committed corpus covers every target: an empty replay would prove nothing.
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        assert!(
            !inputs(&dir).is_empty(),
            "no corpus for {name} in {}",
            dir.display()
        );
    }
    assert!(replay("corpus") > 0);
}

#[test]
fn every_crash_the_fuzzer_found_stays_fixed() {
    replay("regressions");
}

#[test]
fn every_fuzz_target_has_a_binary() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml has no binary for {name}"
        );
    }
}
