//! Every drill of the library parses and validates; broken drills are refused
//! with the path of the offending field.

use std::path::PathBuf;

use roomkeeper_chaos::drill::{DrillError, DrillManifest, FaultKind};

fn library() -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("drills");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("chaos/drills exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            (p, text)
        })
        .collect()
}

#[test]
fn every_drill_in_the_library_is_valid_and_named_after_its_file() {
    let drills = library();
    assert!(
        drills.len() >= 14,
        "the library has {} drills",
        drills.len()
    );
    for (path, text) in &drills {
        let m =
            DrillManifest::from_yaml(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("stem");
        assert_eq!(m.metadata.name, stem, "{}", path.display());
        assert!(
            m.spec.description.is_some(),
            "{} has no description",
            path.display()
        );
    }
}

#[test]
fn the_library_covers_every_fault_kind() {
    let mut seen = std::collections::BTreeSet::new();
    for (_, text) in library() {
        let m = DrillManifest::from_yaml(&text).expect("valid");
        for f in m.spec.faults {
            seen.insert(f.kind.as_str());
        }
    }
    for k in FaultKind::ALL {
        assert!(seen.contains(k.as_str()), "no drill injects {k}");
    }
}

#[test]
fn broken_drills_are_refused_with_field_paths() {
    let (_, good) = library()
        .into_iter()
        .find(|(p, _)| p.ends_with("leader-kill.yaml"))
        .expect("leader-kill.yaml");
    let cases: &[(&str, &str, &str)] = &[
        (
            "durationSecs: 30",
            "durationSecs: 2",
            "spec.durationSecs: must be 5–3600",
        ),
        (
            "afterSecs: 8",
            "afterSecs: 28",
            "spec.faults[0].afterSecs: the fault ends at 43 s",
        ),
        (
            "kind: killLeader",
            "kind: diskStall",
            "spec.faults[0].delayMs: required for diskStall",
        ),
        (
            "kind: killLeader",
            "kind: killEverything",
            "unknown variant `killEverything`",
        ),
        (
            "clients: 8",
            "clients: 0",
            "spec.load.clients: must be 1–256",
        ),
        (
            "{kind: rto, maxMs: 8000}",
            "{kind: rto}",
            "spec.hypothesis.probes[2].maxMs: required for rto",
        ),
        (
            "{kind: rpo, max: 0}",
            "{kind: rpo, maxMs: 0}",
            "spec.hypothesis.probes[1].maxMs: not a parameter of rpo",
        ),
        (
            "withinSecs: 15}",
            "withinSecs: 99}",
            "spec.hypothesis.probes[4].withinSecs: must be ≤",
        ),
        ("name: leader-kill", "name: Leader_Kill", "metadata.name"),
        (
            "noOrdersForSecs: 25",
            "noOrdersForSecs: 0",
            "spec.abort.noOrdersForSecs: must be ≥ 1",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        match DrillManifest::from_yaml(&bad) {
            Ok(_) => panic!("accepted a drill with {to}"),
            Err(
                e @ (DrillError::Invalid(_) | DrillError::Parse(_) | DrillError::WrongType { .. }),
            ) => {
                let msg = e.to_string();
                assert!(msg.contains(expected), "{to}: {msg}");
            }
        }
    }
}
