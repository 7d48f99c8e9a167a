//! Tells the tests whether Redis is there to test against.
//!
//! `SWITCHYARD_TEST_REDIS` set (as `.ci/run` always does) gives the cfg
//! `switchyard_test_redis`; without it the Redis tests are marked ignored,
//! with the reason, so `cargo test`'s own summary counts them as ignored
//! instead of passing tests that did nothing. Nothing in the gateway
//! itself reads this cfg.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(switchyard_test_redis)");
    println!("cargo::rerun-if-env-changed=SWITCHYARD_TEST_REDIS");
    println!("cargo::rerun-if-changed=build.rs");
    let set = std::env::var_os("SWITCHYARD_TEST_REDIS").is_some_and(|url| !url.is_empty());
    if set {
        println!("cargo::rustc-cfg=switchyard_test_redis");
    }
}
