//! Golden tests for configuration errors: each `invalid/<case>.toml` is parsed and the
//! rendered errors must equal `invalid/<case>.err` exactly. An error message is user
//! interface. To regenerate after an intended change: `AIRLOCK_BLESS=1 cargo test -p airlock-config`.

use std::path::Path;

#[test]
fn invalid_configs_report_exact_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let bless = std::env::var_os("AIRLOCK_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "golden cases went missing from {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in cases {
        let source = std::fs::read_to_string(&case).unwrap();
        let name = format!("{}.toml", case.file_stem().unwrap().to_string_lossy());
        let actual = match airlock_config::parse(&source, &name) {
            Ok(_) => "<no error>".to_string(),
            Err(e) => e.to_string(),
        };
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != actual {
            failures.push(format!(
                "--- {name}\nexpected:\n{expected}\nactual:\n{actual}\n"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            airlock_config::load_file(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen > 0, "no example configs found in {}", dir.display());
}
