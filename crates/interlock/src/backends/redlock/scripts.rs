//! The Lua scripts (in `scripts/`), each with the redis backend's `clock_fence.lua` (the server
//! clock and the fencing counter, the same on both backends) and `common.lua` prepended; each
//! runs on one master, sent with `EVALSHA`, and with `EVAL` when the master does not know it (first use, restart).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../redis/scripts/clock_fence.lua"),
                include_str!("scripts/common.lua"),
                include_str!($file)
            ))
        });
    };
}

script!(ACQUIRE, "scripts/acquire.lua");
script!(WRITEBACK, "scripts/writeback.lua");
script!(RENEW, "scripts/renew.lua");
script!(RELEASE, "scripts/release.lua");
script!(STATUS, "scripts/status.lua");

/// Every script, for the check at connect that the master has them cached.
pub(crate) static ALL: [&LazyLock<Script>; 5] = [&ACQUIRE, &WRITEBACK, &RENEW, &RELEASE, &STATUS];
