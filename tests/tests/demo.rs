//! `roomkeeper demo` driven end to end: it starts, serves its JSON status,
//! survives the leader-kill scenario and leaves no process behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roomkeeper_e2e::{binary, http};

#[test]
fn demo_runs_the_leader_kill_scenario_and_cleans_up() {
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let status_addr = format!("127.0.0.1:{}", port.wrapping_add(7));
    let base_port = 40_000 + (std::process::id() % 10_000) as u16 * 3 % 20_000;
    let data_dir =
        std::env::temp_dir().join(format!("roomkeeper-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let child = Command::new(binary())
        .args([
            "demo",
            "--scenario",
            "leader-kill",
            "--fault-after-secs",
            "6",
            "--duration-secs",
            "18",
            "--plain",
        ])
        .args([
            "--status-addr",
            &status_addr,
            "--base-port",
            &base_port.to_string(),
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo");
    let pid = child.id();
    let started = Instant::now();
    let mut leaders = std::collections::BTreeSet::new();
    let mut max_ok = 0u64;
    let mut events: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(16) {
        if let Ok(r) = http(
            "GET",
            &status_addr,
            "/status",
            None,
            None,
            Duration::from_secs(1),
        ) {
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
