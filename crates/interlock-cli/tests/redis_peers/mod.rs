//! The Python Redis lock tools that `interop_redis.rs` (one server) and `interop_redlock.rs`
//! (three masters) meet interlock with: one driver program ([`PEER_PY`], modes `hold`, `try`,
//! `wait=SECONDS`) and what the tokens they set look like (read in their sources).

use std::process::Command;

/// The driver: `python3 -c PEER_PY TOOL URL[,URL...] NAME MODE` (see the file's header).
pub const PEER_PY: &str = include_str!("peer.py");

const PYTHON: &str = "python3";

/// `TOOL` on the masters `urls` (comma-separated), lock `name`, in `mode`.
pub fn command(tool: &str, urls: &str, name: &str, mode: &str) -> Command {
    let mut c = Command::new(PYTHON);
    c.args(["-c", PEER_PY, tool, urls, name, mode]);
    c
}

/// True when Python has `redis` and the tool's `module` (else the caller skips, or fails under
/// `INTERLOCK_TEST_REQUIRE=1`).
pub fn available(module: &str) -> bool {
    crate::cli_support::require_tool(PYTHON, &["-c", &format!("import redis, {module}")])
}

/// `TOOL ... try`: true if the tool got the lock at once (and released it). Blocks.
pub fn try_once(tool: &str, urls: &str, name: &str) -> bool {
    let out = crate::cli_support::output(command(tool, urls, name, "try"));
    match out.code() {
        Some(0) => true,
        Some(3) => false,
        other => panic!("{tool} try exited {other:?}: {}", out.stderr),
    }
}

/// pottery: `str(uuid4())`.
pub fn uuid4(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        && parts[2].starts_with('4')
}

/// redlock-py: 22 random letters and digits.
pub fn alnum22(v: &str) -> bool {
    v.len() == 22 && v.bytes().all(|b| b.is_ascii_alphanumeric())
}
