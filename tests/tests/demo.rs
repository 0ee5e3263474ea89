//! `roomkeeper demo` driven end to end: it starts, serves its JSON status,
//! survives the leader-kill scenario and leaves no process behind.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use roomkeeper_e2e::{get, spawn_demo};

#[test]
fn demo_runs_the_leader_kill_scenario_and_cleans_up() {
    // The status port is reserved and held (D26). The nodes' base port is
    // below the ephemeral range (32768+), where no outgoing connection can
    // take it; the two demo tests use disjoint ranges.
    let (status_addr, _status_port) = roomkeeper_e2e::reserve_addr();
    let base_port = 12_000 + (std::process::id() % 2_000) as u16 * 3;
    let data_dir =
        std::env::temp_dir().join(format!("roomkeeper-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let child = spawn_demo(
        &[
            "--scenario",
            "leader-kill",
            "--fault-after-secs",
            "6",
            "--duration-secs",
            "18",
            "--plain",
        ],
        &status_addr,
        base_port,
        &data_dir,
    );
    let pid = child.id();
    let started = Instant::now();
    let mut leaders = std::collections::BTreeSet::new();
    let mut max_ok = 0u64;
    let mut events: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(16) {
        if let Ok(r) = get(&status_addr, "/status") {
            if let Some(l) = r.body["observation"]["leader"].as_u64() {
                leaders.insert(l);
            }
            max_ok = max_ok.max(r.body["load"]["ok"].as_u64().unwrap_or(0));
            if let Some(e) = r.body["events"].as_array() {
                events = e
                    .iter()
                    .filter_map(|e| e.as_str().map(String::from))
                    .collect();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = child.wait_with_output().expect("demo output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        max_ok > 100,
        "the flash sale acknowledged too few orders ({max_ok})\n{stdout}"
    );
    assert!(
        leaders.len() >= 2,
        "the leader kill must elect a new leader, saw {leaders:?}\n{stdout}"
    );
    assert!(
        events.iter().any(|e| e.contains("FAULT: SIGKILL leader")),
        "the fault is shown in the status events: {events:?}"
    );
    assert!(
        stdout.contains("invariants hold"),
        "the demo checks invariants at the end\n{stdout}"
    );
    assert!(!stdout.contains("VIOLATED"), "{stdout}");
    assert!(
        stdout.contains("acknowledged orders present"),
        "no acknowledged order may be lost across the leader kill\n{stdout}"
    );
    // Every node process is gone.
    let ps = Command::new("pgrep")
        .args(["-f", &data_dir.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "node processes of demo {pid} left running"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The README's way to stop the demo: Ctrl-C (SIGINT to the demo alone, as a
/// terminal sends it to the foreground process group; the nodes run in their
/// own group). The demo stops the load, reads every acknowledged order back
/// from the surviving nodes, says so in words, and exits within 10 s; its
/// data directory, with the decision record, is kept.
#[test]
fn ctrl_c_checks_every_acknowledged_order_and_exits_within_10_s() {
    let (status_addr, _status_port) = roomkeeper_e2e::reserve_addr();
    // Below the ephemeral range, disjoint from the other demo test's.
    let base_port = 24_000 + (std::process::id() % 2_000) as u16 * 3;
    let data_dir =
        std::env::temp_dir().join(format!("roomkeeper-demo-ctrlc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let child = spawn_demo(&["--plain"], &status_addr, base_port, &data_dir);
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let started = Instant::now();
    let mut ok = 0;
    while started.elapsed() < Duration::from_secs(40) && ok < 300 {
        if let Ok(r) = get(&status_addr, "/status") {
            ok = r.body["load"]["ok"].as_u64().unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    kill(pid, Signal::SIGINT).expect("send SIGINT to the demo");
    let interrupted = Instant::now();
    let out = child.wait_with_output().expect("demo output");
    let took = interrupted.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(ok >= 300, "orders never flowed ({ok})\n{context}");
    assert!(out.status.success(), "demo failed on Ctrl-C\n{context}");
    assert!(
        took <= Duration::from_secs(10),
        "the demo took {took:?} to stop after Ctrl-C\n{context}"
    );
    assert!(
        stdout.contains("acknowledged orders present on the surviving nodes"),
        "Ctrl-C must check every acknowledged order\n{context}"
    );
    assert!(
        !stdout.contains("NOT CHECKED") && !stdout.contains("LOST"),
        "{context}"
    );
    assert!(stdout.contains("invariants hold"), "{context}");
    for debug in ["Some(", "None", "Region(", "LeaderKill", "[1,"] {
        assert!(
            !stdout.contains(debug),
            "Rust debug formatting in what people read ({debug})\n{context}"
        );
    }
    let decisions = data_dir.join("controller/decisions.jsonl");
    assert!(
        data_dir.join("controller").is_dir(),
        "the data directory (with {}) is kept\n{context}",
        decisions.display()
    );
    // Node logs carry no colour codes and no ERROR for a normal shutdown.
    for entry in std::fs::read_dir(&data_dir).expect("data dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".log") {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(!log.contains('\u{1b}'), "ANSI codes in {name}:\n{log}");
            assert!(!log.contains("ERROR"), "ERROR in {name}:\n{log}");
        }
    }
    let ps = Command::new("pgrep")
        .args(["-f", &data_dir.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "node processes left running after Ctrl-C"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// A demo stopped any other way also takes its nodes with it: SIGTERM while
/// the cluster is still starting (before the sale, when Ctrl-C used to kill
/// the demo outright), and SIGHUP in the sale (the terminal closed, so
/// nothing can be printed). Left behind, the nodes would hold their ports and
/// the next demo would fail to start.
#[test]
fn sigterm_in_start_up_and_sighup_in_the_sale_leave_no_process_behind() {
    for (signal, in_sale) in [(Signal::SIGTERM, false), (Signal::SIGHUP, true)] {
        let (status_addr, _status_port) = roomkeeper_e2e::reserve_addr();
        // Below the ephemeral range, disjoint from the other demo tests'.
        let base_port = 18_100 + (std::process::id() % 1_900) as u16 * 3;
        let data_dir =
            std::env::temp_dir().join(format!("roomkeeper-demo-{signal}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let child = spawn_demo(&["--plain", "--clean"], &status_addr, base_port, &data_dir);
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        let nodes_running = || {
            let ps = Command::new("pgrep")
                .args([
                    "-f",
                    &format!("node --id .* --data-dir {}", data_dir.display()),
                ])
                .output()
                .expect("pgrep");
            String::from_utf8_lossy(&ps.stdout).lines().count()
        };
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "{signal}: the demo never reached the point to signal"
            );
            let ready = if in_sale {
                get(&status_addr, "/status")
                    .is_ok_and(|r| r.body["load"]["ok"].as_u64().unwrap_or(0) >= 100)
            } else {
                nodes_running() > 0
            };
            if ready {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill(pid, signal).expect("signal the demo");
        let signalled = Instant::now();
        let out = child.wait_with_output().expect("demo output");
        let took = signalled.elapsed();
        let context = format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{signal}: the demo did not stop cleanly\n{context}"
        );
        assert!(
            took <= Duration::from_secs(10),
            "{signal}: the demo took {took:?} to stop\n{context}"
        );
        let said = if in_sale {
            "acknowledged orders present on the surviving nodes".to_string()
        } else {
            format!("{signal} during start-up: stopping every process")
        };
        assert!(
            context.contains(&said),
            "{signal}: expected {said:?}\n{context}"
        );
        assert_eq!(
            nodes_running(),
            0,
            "{signal}: node processes left running\n{context}"
        );
        assert!(
            !data_dir.exists(),
            "{signal}: --clean must still remove the data directory\n{context}"
        );
    }
}
