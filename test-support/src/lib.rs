//! What Ferry's test suites and benchmarks share, and nothing the shipped crates need:
//! [`skip`] (below), [`payload`] (incompressible bytes from a seed), [`procfs`] (a process's CPU
//! time and memory), [`rtb`] (RTB-like JSON messages), [`http`] (a minimal GET, for the
//! monitor's pages), [`nginx`] (nginx with its stream module, found), [`sibling`] (a program
//! built beside this one), [`udp_echo`] (a UDP echo backend that names each sender). A dev-dependency of the crates whose tests use it, and a dependency
//! of the root package only for `ferry-bench` and `ferry-demo`, which the agent and the gateway
//! do not link.
//!
//! A test that cannot run on this machine (no Chromium, not root, no IPv6 loopback...) must not
//! pass as if it had: a green run would then say nothing about what it covers. So [`skip`]
//! fails the test, naming what is missing, unless `FERRY_ALLOW_SKIP` lets that need be skipped;
//! either way it writes one `SKIPPED` line past the test harness's output capture, which
//! `.ci/run` counts and lists at the end of the run.
//!
//! `FERRY_ALLOW_SKIP` is a comma-separated list of needs (`ipv6,gso`), or `all` (or `1`): a developer
//! without root sets `FERRY_ALLOW_SKIP=root`, a CI runner without IPv6 `FERRY_ALLOW_SKIP=ipv6`,
//! and everything else must still run.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;

pub mod http;
pub mod nginx;
pub mod payload;
pub mod procfs;
pub mod rtb;
mod sibling;
pub mod udp_echo;

pub use http::{http_get, http_get_accepting};
pub use payload::payload;
pub use sibling::sibling;
pub use udp_echo::udp_echo_backend;

/// The variable that lets tests skip.
pub const ALLOW_SKIP: &str = "FERRY_ALLOW_SKIP";

/// The start of the line a skipped test writes (`.ci/run` looks for it).
pub const SKIPPED: &str = "SKIPPED";

/// Whether `allow` (the value of [`ALLOW_SKIP`]) lets a test that lacks `need` skip.
pub fn allows(allow: &str, need: &str) -> bool {
    allow
        .split(',')
        .map(str::trim)
        .any(|n| n == "all" || n == "1" || n.eq_ignore_ascii_case(need))
}

/// Ends a test that cannot run here because it lacks `need` (a short name: `chromium`,
/// `root`, `ipv6`...), for the reason `why` (which says how to get it, where one can). Writes
/// `SKIPPED <test>: <why> [<need>]` to stderr, uncaptured, then returns if [`ALLOW_SKIP`] allows
/// `need`, or panics, failing the test, if it does not. Call it and return.
#[track_caller]
pub fn skip(need: &str, why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    // One write, so that lines of tests running in parallel do not interleave.
    let line = format!("{SKIPPED} {test}: {why} [{need}]\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let allow = std::env::var(ALLOW_SKIP).unwrap_or_default();
    if let Some(failure) = refusal(&allow, test, need, why) {
        panic!("{failure}");
    }
}

/// Why a test that lacks `need` fails, unless `allow` lets it skip.
fn refusal(allow: &str, test: &str, need: &str, why: &str) -> Option<String> {
    (!allows(allow, need)).then(|| {
        format!(
            "{test} did not run: {why}. Give this machine what it needs (.ci/run installs what \
             it can), or set {ALLOW_SKIP}={need} (or all) to let the test pass as skipped."
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_needs_listed_may_be_skipped() {
        assert!(allows("all", "root") && allows("1", "root"));
        assert!(allows("ipv6, root", "root") && allows("ipv6,root", "ipv6"));
        assert!(allows("IPv6", "ipv6"));
        assert!(!allows("", "root") && !allows("0", "root") && !allows("ipv6", "root"));
        assert!(!allows("rootless", "root"));
    }

    #[test]
    fn a_skip_that_is_not_allowed_fails_the_test_saying_what_to_do() {
        let failure = refusal("ipv6", "dashboard", "chromium", "no Chromium").unwrap();
        assert_eq!(
            failure,
            "dashboard did not run: no Chromium. Give this machine what it needs (.ci/run \
             installs what it can), or set FERRY_ALLOW_SKIP=chromium (or all) to let the test \
             pass as skipped."
        );
        assert_eq!(
            refusal("chromium", "dashboard", "chromium", "no Chromium"),
            None
        );
    }
}
