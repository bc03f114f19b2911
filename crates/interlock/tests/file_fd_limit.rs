//! file:// under a low descriptor limit: the descriptors the backend keeps open between
//! acquisitions (one cache per process, shared by every provider) are a small share of
//! `RLIMIT_NOFILE`, and are given back when the process runs out, so the cache is never what
//! makes the application's own `open()` fail.
//!
//! Alone in this test binary, and one test: the limit and the cache belong to the process (the
//! cache reads the limit when the process's first acquisition makes it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::Path;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// This process's descriptors open on files of `dir`.
fn fds_in(dir: &Path) -> usize {
    let prefix = format!("{}/", dir.display());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with(&prefix))
        .count()
}

fn set_soft_limit(n: u64) {
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(Resource::Nofile, Rlimit { current: Some(n), maximum: hard }).unwrap();
}

#[test]
fn the_descriptor_cache_never_exhausts_the_process() {
    // Before any acquisition: the cache is made with an eighth of this, 32.
    set_soft_limit(256);
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().display());
    let a = interlock::blocking::connect(&url).unwrap();
    let b = interlock::blocking::connect(&url).unwrap();

    // 5000 distinct names, on two providers of one directory, twice each (the second time uses
    // the fencing counter's descriptor, which is kept from then on).
    let mut most = 0;
    for i in 0..5000 {
        for p in [&a, &b] {
            let g = p.mutex(format!("user-{i}")).unwrap().lock().unwrap_or_else(|e| panic!("name {i}: {e}"));
            g.release().unwrap();
        }
        most = most.max(fds_in(tmp.path()));
    }
    assert!(most <= 32, "the cache kept {most} descriptors under a limit of 256 (two providers share one cache)");

    // The application can still open files: all but the few the process had before, and the
    // cache's (at most 32).
    let files: Vec<File> = (0..150).map(|_| File::open("/dev/null").unwrap()).collect();
    drop(files);

    // The application takes every descriptor left: the cache gives its own back, and an
    // acquisition still works.
    assert!(fds_in(tmp.path()) > 0, "the cache keeps some");
    let mut filler = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let g = a.mutex("one-more").unwrap().try_lock().unwrap_or_else(|e| panic!("out of descriptors: {e}"));
    let g = g.expect("free");
    assert!(g.fencing_token().is_some());
    drop(filler);
    g.release().unwrap();

    // A limit lowered later: the cache notices within 64 releases.
    set_soft_limit(128);
    for i in 0..200 {
        let g = a.mutex(format!("later-{i}")).unwrap().lock().unwrap();
        g.release().unwrap();
        if i >= 64 {
            let kept = fds_in(tmp.path());
            assert!(kept <= 16, "{kept} kept under a limit of 128, {i} releases after it was lowered");
        }
    }
}
