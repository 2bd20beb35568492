//! Builds `csrc/header_probe.c` against the librdkafka that rdkafka-sys built (its
//! source tree, configured, is `DEP_RDKAFKA_ROOT`), and sets `cfg(header_probe)` when
//! it did. A librdkafka without its source tree here (linked from the system) leaves
//! the probe out, and headers are read the plain way.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(header_probe)");
    println!("cargo::rerun-if-changed=csrc/header_probe.c");
    println!("cargo::rerun-if-env-changed=DEP_RDKAFKA_ROOT");
    let Some(root) = std::env::var_os("DEP_RDKAFKA_ROOT").map(PathBuf::from) else {
        return;
    };
    let src = root.join("src");
    if !src.join("rdkafka_msg.h").exists() || !root.join("config.h").exists() {
        return;
    }
    cc::Build::new()
        .file("csrc/header_probe.c")
        .include(&root)
        .include(&src)
        .warnings(false)
        .compile("eventbus_header_probe");
    println!("cargo::rustc-cfg=header_probe");
}
