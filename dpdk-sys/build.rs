//! Finds Debian's DPDK with pkg-config, compiles the C shim with DPDK's own flags, and
//! generates bindings with bindgen. The flags come from pkg-config (`-include rte_config.h`,
//! `-march=corei7`), never `-march=native`, so the binary runs on the machine that built it
//! and on the CI machine alike.

use std::env;
use std::path::PathBuf;

fn main() {
    let lib = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!(
                "DPDK not found by pkg-config ({e}).\n\
                 Install it with: apt-get install libdpdk-dev pkg-config clang libclang-dev \
                 (or run scripts/setup.sh)"
            )
        });

    // pkg-config's cflags, as DPDK wants them: include dirs, `-include rte_config.h`, `-march=...`.
    let cflags_out = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("run pkg-config --cflags libdpdk");
    let cflags: Vec<String> = String::from_utf8_lossy(&cflags_out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    let mut build = cc::Build::new();
    build
        .file("shim.c")
        .include(".")
        .opt_level(3)
        .warnings(false);
    for f in &cflags {
        build.flag(f);
    }
    build.compile("dpdk_shim");

    // `-march` only matters for code generation; bindgen gets the rest.
    let clang_args: Vec<String> = cflags
        .iter()
        .filter(|f| !f.starts_with("-march"))
        .cloned()
        .collect();
    let bindings = bindgen::Builder::default()
        .header("shim.h")
        .clang_args(&clang_args)
        .clang_arg("-I.")
        .allowlist_function("shim_.*")
        .allowlist_function("rte_eal_.*")
        .allowlist_function("rte_eth_.*")
        .allowlist_function("rte_pktmbuf_.*")
        .allowlist_function("rte_mempool_.*")
        .allowlist_function("rte_lcore_.*")
        .allowlist_function("rte_get_.*_lcore")
        .allowlist_function("rte_get_tsc_hz")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_version")
        .allowlist_function("rte_thread_register")
        .allowlist_function("rte_thread_unregister")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_ring_.*")
        .allowlist_type("rte_mbuf")
        .allowlist_type("rte_eth_.*")
        .allowlist_var("RTE_.*")
        .allowlist_var("RTE_ETH_.*")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed on DPDK headers (install clang and libclang-dev)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    for path in &lib.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-changed=shim.h");
}
