//! Every file in tests/flows/bad must be rejected with the message its first
//! line promises (`# expect: …`), and every flow in jobs/ and every flow the
//! tests run (tests/flows/*.toml) must validate.

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
    validate_all("jobs");
}

#[test]
fn the_tests_flows_validate() {
    validate_all("tests/flows");
}

fn validate_all(dir: &str) {
    let mut n = 0;
    for e in std::fs::read_dir(root().join(dir)).unwrap() {
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

#[test]
fn site_configs_load_and_shipped_flows_fit_them() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("site-configs")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let site = beamflow::site::SiteConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            for f in std::fs::read_dir(root().join("jobs")).unwrap() {
                let fp = f.unwrap().path();
                let src = std::fs::read_to_string(&fp).unwrap();
                if let Err(e) = beamflow::flow::parse(&src, &fp.display().to_string(), Some(&site))
                {
                    panic!("{} on site {}: {e}", fp.display(), site.name);
                }
            }
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn a_site_rejects_requests_it_cannot_hold() {
    let site = beamflow::site::SiteConfig::parse(
        "name = \"tiny\"\n[targets.cpu]\ncpus_per_node = 4\n",
        "tiny.toml",
    )
    .unwrap();
    let src = "name = \"x\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"kernel\"\nkernel = \"noop\"\nresources = { cpus = 8 }\n";
    let err = beamflow::flow::parse(src, "x.toml", Some(&site))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "x.toml:7: steps.a.resources: no variant fits target `cpu` of site `tiny` (4 cpus/node)"
    );
    let gpu = src
        .replace("cpus = 8", "cpus = 1")
        .replace("kernel = \"noop\"\n", "kernel = \"noop\"\non = \"gpu\"\n");
    let err = beamflow::flow::parse(&gpu, "x.toml", Some(&site))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown target `gpu` (known: cpu)"), "{err}");
}
