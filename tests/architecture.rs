//! The layering of docs/architecture.md, checked on the source: every `crate::<module>` path in a library module
//! must name a module of a strictly lower layer (or the module itself). An upward import fails with the file,
//! line and both layers.
use std::path::Path;

/// Layer of each top-level library module, bottom = 0 (the table of docs/architecture.md).
const LAYERS: &[(&str, usize)] = &[
    ("error", 0),
    ("units", 0),
    ("rng", 0),
    ("linalg", 1),
    ("frame", 1),
    ("elements", 1),
    ("io", 2),
    ("neighbors", 2),
    ("descriptor", 3),
    ("nn", 3),
    ("prediction", 3),
    ("repulsion", 3),
    ("family", 3),
    ("model", 4),
    ("onnx", 5),
    ("runtime", 6),
    ("metrics", 7),
    ("check", 7),
    ("export", 8),
    ("config", 9),
    ("dataset", 10),
    ("train", 11),
    ("c_api", 12),
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn library_modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
        if first == "lib" || first == "bin" || first == "main" {
            continue; // the crate root declares modules; the binary may use the whole public API
        }
        let own = layer(&first).unwrap_or_else(|| panic!("src/{}: module '{first}' is not in the layer table", rel.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue; // doc links are not imports
            }
            for (k, _) in line.match_indices("crate::") {
                let name: String = line[k + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                let Some(dep) = layer(&name) else { continue };
                checked += 1;
                if name != first && dep >= own {
                    violations.push(format!("src/{}:{}: {first} (layer {own}) imports {name} (layer {dep})", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} crate:: paths found: is the scan broken?");
    assert!(violations.is_empty(), "upward imports:\n  {}", violations.join("\n  "));
}

#[test]
fn the_layer_table_lists_every_module_of_the_crate_root() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(declared.len() >= 20, "{declared:?}");
    for m in &declared {
        assert!(layer(m).is_some(), "module {m} is declared in src/lib.rs but has no layer");
    }
    assert_eq!(declared.len(), LAYERS.len(), "the table lists a module that src/lib.rs does not declare");
}
