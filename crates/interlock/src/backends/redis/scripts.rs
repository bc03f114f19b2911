//! The Lua scripts (in `scripts/`), each with `clock_fence.lua` (the server clock and the fencing
//! counter, shared with the redlock backend) and `common.lua` prepended; sent with `EVALSHA`, and
//! with `EVAL` when the server does not know them (first use, after a restart).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/clock_fence.lua"),
                include_str!("scripts/common.lua"),
                include_str!($file)
            ))
        });
    };
}

script!(ACQUIRE_RW, "scripts/acquire_rw.lua");
script!(RELEASE_RW, "scripts/release_rw.lua");
script!(RENEW_RW, "scripts/renew_rw.lua");
script!(ACQUIRE_SEM, "scripts/acquire_sem.lua");
script!(RELEASE_SEM, "scripts/release_sem.lua");
script!(RENEW_SEM, "scripts/renew_sem.lua");
script!(STATUS, "scripts/status.lua");
