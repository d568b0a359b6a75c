//! Generates `include/pilip.h` from `src/c_api/mod.rs` with cbindgen. The header is committed; the file is only
//! rewritten when its content changes, and CI fails if a build leaves it different from the committed one.

fn main() {
    println!("cargo:rerun-if-changed=src/c_api");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = std::path::Path::new(&root);
    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    // The version macros come from Cargo.toml, the one place the version is written.
    let part = |k: &str| std::env::var(k).expect("cargo sets the CARGO_PKG_VERSION_* variables");
    config.after_includes = Some(format!(
        "\n// Library version, MAJOR.MINOR.PATCH (also returned by pilip_version()).\n\
         #define PILIP_VERSION_MAJOR {}\n#define PILIP_VERSION_MINOR {}\n#define PILIP_VERSION_PATCH {}",
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        part("CARGO_PKG_VERSION_PATCH")
    ));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/c_api/mod.rs"))
        .generate()
        .expect("cbindgen could not generate include/pilip.h");
    let mut header = Vec::new();
    bindings.write(&mut header);
    let path = root.join("include/pilip.h");
    if std::fs::read(&path).ok().as_deref() != Some(header.as_slice()) {
        std::fs::write(&path, header).expect("cannot write include/pilip.h");
    }
}
