//! Every file in tests/flows/bad must be rejected with the message its first
//! line promises (`# expect: …`), and every flow in jobs/ must validate.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn bad_flows_fail_with_their_expected_message() {
    let dir = root().join("tests/flows/bad");
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let src = std::fs::read_to_string(&path).unwrap();
        let expect = src
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!("{}: first line must be `# expect: MESSAGE`", path.display())
            });
        let name = path.file_name().unwrap().to_str().unwrap();
        let err = beamflow::flow::parse(&src, name, None)
            .expect_err(name)
            .to_string();
        assert!(
            err.contains(expect),
            "{name}:\n  expected: {expect}\n  got:      {err}"
        );
        n += 1;
    }
    assert!(n >= 15, "only {n} bad flows found in {}", dir.display());
}

#[test]
fn shipped_flows_validate() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("jobs")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let src = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = beamflow::flow::parse(&src, &path.display().to_string(), None) {
                panic!("{e}");
            }
            n += 1;
        }
    }
    assert!(n >= 1);
}
