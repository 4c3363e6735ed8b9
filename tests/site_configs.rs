//! Site configs and the job scripts generated from them: every shipped config
//! validates, scripts match golden files and each facility's conventions, the
//! token never appears in a script, and bad configs fail with file:line:key.

use std::path::{Path, PathBuf};

use beamflow::batch::script::{JobRequest, PilotCommand};
use beamflow::site::SiteConfig;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn site(name: &str) -> SiteConfig {
    SiteConfig::load(&root().join("site-configs").join(format!("{name}.toml"))).unwrap()
}

/// A script with fixed paths, so goldens do not depend on the machine.
fn script(site_name: &str, target: &str, nodes: u32, reservation: Option<&str>) -> String {
    let s = site(site_name);
    let t = s.effective(target).unwrap();
    let mut serves = vec![target.to_string()];
    if reservation.is_some() && target != "realtime" {
        serves.insert(0, "realtime".into());
    }
    JobRequest {
        name: format!("bf-{target}-1-1"),
        nodes,
        walltime_s: t.walltime_s,
        reservation: reservation.map(String::from),
        dir: PathBuf::from("/home/user/.beamflow/alloc/1/1"),
        pilot: PilotCommand {
            exe: "/opt/beamflow/bin/beamflow".into(),
            url: "https://login01:7878".into(),
            token_file: PathBuf::from("/home/user/.beamflow/token"),
            server_cert: Some(PathBuf::from("/home/user/.beamflow/tls/cert.pem")),
            targets: serves,
            idle_timeout_s: Some(300),
            prefetch: t.pilot.prefetch.unwrap_or(1),
            drain_margin_s: 120,
        },
        target: t,
    }
    .render()
    .unwrap()
}

/// A job for `t` with a plain pilot command.
fn request(t: beamflow::site::EffectiveTarget, nodes: u32, walltime_s: u64) -> JobRequest {
    JobRequest {
        name: "x".into(),
        nodes,
        walltime_s,
        reservation: None,
        dir: "/tmp/x".into(),
        pilot: PilotCommand {
            exe: "beamflow".into(),
            url: "http://h:1".into(),
            token_file: "/t".into(),
            server_cert: None,
            targets: vec!["gpu".into()],
            idle_timeout_s: None,
            prefetch: 1,
            drain_margin_s: 60,
        },
        target: t,
    }
}

fn golden(name: &str, text: &str) {
    let path = root().join("tests/data/scripts").join(name);
    if std::env::var_os("BEAMFLOW_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (BEAMFLOW_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    assert_eq!(text, want, "{} differs", path.display());
}

/// `bash -n`: the script parses.
fn parses(text: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(f.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn directives<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn every_shipped_site_config_validates() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("site-configs")).unwrap() {
        let p = e.unwrap().path();
        let s = SiteConfig::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
        for t in s.targets.keys() {
            s.effective(t).unwrap();
        }
        n += 1;
    }
    assert!(n >= 6, "only {n} site configs");
}

#[test]
fn polaris_script_follows_alcf_conventions() {
    let s = script("polaris", "gpu", 2, None);
    golden("polaris-gpu.pbs", &s);
    parses(&s);
    assert!(s.starts_with("#!/bin/bash -l\n"));
    let d = directives(&s, "#PBS");
    for want in [
        "#PBS -A MyProject",
        "#PBS -q capacity",
        "#PBS -l select=2:system=polaris",
        "#PBS -l walltime=06:00:00",
        "#PBS -l filesystems=home:eagle",
        "#PBS -l place=scatter",
        "#PBS -k doe",
    ] {
        assert!(d.contains(&want), "missing `{want}` in\n{s}");
    }
    // ALCF: no comment on or between directive lines.
    let lines: Vec<&str> = s.lines().collect();
    let first = lines.iter().position(|l| l.starts_with("#PBS")).unwrap();
    let last = lines.iter().rposition(|l| l.starts_with("#PBS")).unwrap();
    for l in &lines[first..=last] {
        assert!(l.starts_with("#PBS") && !l[4..].contains('#'), "`{l}`");
    }
    // One pilot per node.
    assert!(s.contains("mpiexec -n \"$NNODES\" --ppn 1 --depth=64 --cpu-bind depth"));
    assert!(s.contains("--token-file /home/user/.beamflow/token"));
}

#[test]
fn aurora_script_follows_alcf_conventions() {
    let s = script("aurora", "gpu", 1, None);
    golden("aurora-gpu.pbs", &s);
    parses(&s);
    let d = directives(&s, "#PBS");
    assert!(
        s.contains("--gpus 0,1,2,3,4,5 --gpu-env ZE_AFFINITY_MASK"),
        "{s}"
    );
    for want in [
        "#PBS -l select=1",
        "#PBS -l filesystems=home:flare",
        "#PBS -q capacity",
    ] {
        assert!(d.contains(&want), "missing `{want}` in\n{s}");
    }
}

#[test]
fn pbs_reservations_go_through_the_reservation_queue() {
    let s = script("polaris", "realtime", 1, Some("R4242"));
    golden("polaris-realtime-R4242.pbs", &s);
    assert!(directives(&s, "#PBS").contains(&"#PBS -q R4242"), "{s}");
    assert!(!s.contains("#PBS -q demand"));
    assert!(s.contains("--reservation R4242"));
}

#[test]
fn perlmutter_script_follows_nersc_conventions() {
    let s = script("perlmutter", "gpu", 2, None);
    golden("perlmutter-gpu.sbatch", &s);
    parses(&s);
    let d = directives(&s, "#SBATCH");
    for want in [
        "#SBATCH -A m1234_g",
        "#SBATCH -C gpu",
        "#SBATCH -q regular",
        "#SBATCH -N 2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH -c 128",
        "#SBATCH --gpus-per-node=4",
    ] {
        assert!(d.contains(&want), "missing `{want}` in\n{s}");
    }
    // srun is always told -c (its inheritance changed across versions).
    assert!(
        s.contains("--ntasks-per-node=1 -c 128 --gpus-per-node=4"),
        "{s}"
    );
    let cpu = script("perlmutter", "cpu", 1, None);
    assert!(directives(&cpu, "#SBATCH").contains(&"#SBATCH -A m1234"));
    assert!(directives(&cpu, "#SBATCH").contains(&"#SBATCH -C cpu"));
}

/// A preemptable target's job may be rerun by the scheduler, and its
/// pilot knows it is preemptable (its tasks then go back for free).
#[test]
fn preemptable_targets_are_rerunnable_and_their_pilots_say_so() {
    let pbs = script("polaris", "backfill", 1, None);
    golden("polaris-backfill.pbs", &pbs);
    parses(&pbs);
    let d = directives(&pbs, "#PBS");
    assert!(
        d.contains(&"#PBS -q preemptable") && d.contains(&"#PBS -r y"),
        "{pbs}"
    );
    assert!(pbs.contains(" --preemptable"), "{pbs}");
    let slurm = script("perlmutter", "preempt", 1, None);
    golden("perlmutter-preempt.sbatch", &slurm);
    parses(&slurm);
    let d = directives(&slurm, "#SBATCH");
    assert!(
        d.contains(&"#SBATCH -q preempt") && d.contains(&"#SBATCH --requeue"),
        "{slurm}"
    );
    assert!(slurm.contains(" --preemptable"), "{slurm}");
    // Other targets are neither.
    let gpu = script("perlmutter", "gpu", 1, None);
    assert!(
        !gpu.contains("--requeue") && !gpu.contains("--preemptable"),
        "{gpu}"
    );
    let gpu = script("polaris", "gpu", 1, None);
    assert!(
        !gpu.contains("-r y") && !gpu.contains("--preemptable"),
        "{gpu}"
    );
}

#[test]
fn frontier_script_follows_olcf_conventions() {
    let s = script("frontier", "gpu", 4, Some("beamtime"));
    golden("frontier-gpu-reservation.sbatch", &s);
    parses(&s);
    let d = directives(&s, "#SBATCH");
    for want in [
        "#SBATCH -A ABC123",
        "#SBATCH -p batch",
        "#SBATCH -N 4",
        "#SBATCH --reservation=beamtime",
        "#SBATCH -t 02:00:00",
    ] {
        assert!(d.contains(&want), "missing `{want}` in\n{s}");
    }
    assert!(s.contains("module load PrgEnv-cray craype-accel-amd-gfx90a rocm"));
    assert!(
        s.contains("--gpus 0,1,2,3,4,5,6,7 --gpu-env ROCR_VISIBLE_DEVICES"),
        "{s}"
    );
    assert!(s.contains("--targets realtime,gpu"));
}

#[test]
fn local_slurm_script() {
    let s = script("local-slurm", "cpu", 1, None);
    golden("local-slurm-cpu.sbatch", &s);
    parses(&s);
}

/// `pilot_per = "job"`: one pilot for the whole job, told to hold its
/// nodes and given the launcher flags, not wrapped in srun/mpiexec.
#[test]
fn a_whole_job_pilot_is_started_once_with_the_launcher_flags() {
    let s = script("local-slurm", "mpi", 3, None);
    golden("local-slurm-mpi.sbatch", &s);
    parses(&s);
    assert!(directives(&s, "#SBATCH").contains(&"#SBATCH -N 3"));
    let last = s.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("/opt/beamflow/bin/beamflow pilot"),
        "{last}"
    );
    assert!(last.contains("--span-job"), "{last}");
    assert!(!s.lines().any(|l| l.starts_with("srun")), "{s}");
    let mut site = site("polaris");
    let gpu = site.targets.get_mut("gpu").unwrap();
    gpu.pilot_per = beamflow::site::PilotPer::Job;
    let t = site.effective("gpu").unwrap();
    let text = request(t, 2, 3600).render().unwrap();
    parses(&text);
    assert!(!text.lines().any(|l| l.starts_with("mpiexec")), "{text}");
    assert!(
        text.contains(
            "--span-job --launcher-flags '--depth=64 --cpu-bind depth' --walltime-end \"$END\""
        ),
        "{text}"
    );
}

#[test]
fn limits_are_enforced_when_rendering() {
    let s = site("frontier");
    let t = s.effective("gpu").unwrap();
    let req = |nodes: u32, walltime_s: u64| request(t.clone(), nodes, walltime_s);
    let e = req(200, 3600).render().unwrap_err().to_string();
    assert!(e.contains("at most 91"), "{e}");
    let e = req(1, 5 * 3600).render().unwrap_err().to_string();
    assert!(e.contains("at most 02:00:00"), "{e}");
    let e = site("local").effective("cpu").map(|t| {
        JobRequest {
            target: t,
            ..req(1, 60)
        }
        .render()
    });
    assert!(e
        .unwrap()
        .unwrap_err()
        .to_string()
        .contains("no batch scheduler"));
}

/// `beamflow site validate FILE` must fail; its stderr.
fn validate_fails(p: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beamflow"))
        .args(["site", "validate"])
        .arg(p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_site_config_names_file_line_and_key_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.toml");
    std::fs::write(
        &p,
        "name = \"broken\"\nscheduler = \"slurm\"\n\n[targets.gpu]\nqueue = \"gpu\"\nwalltime = \"2h\"\ncpus_per_node = \"many\"\n",
    )
    .unwrap();
    let err = validate_fails(&p);
    // The line and the key path, as for the checks after parsing.
    assert!(
        err.contains(&format!(
            "{}:7: targets.gpu.cpus_per_node: invalid type: string \"many\"",
            p.display()
        )),
        "{err}"
    );

    std::fs::write(
        &p,
        "name = \"broken\"\nscheduler = \"pbs\"\naccount = \"A\"\n\n[targets.gpu]\nqueue = \"prod\"\nwalltime = \"1:00:00\"\nqos = \"premium\"\n",
    )
    .unwrap();
    let err = validate_fails(&p);
    assert!(
        err.contains(&format!(
            "{}:8: targets.gpu.qos: is a Slurm option",
            p.display()
        )),
        "{err}"
    );
}
