//! The chaos command itself, briefly: a mixed load while workers, the reaper
//! and Redis are killed, ending with an audit that must find nothing lost.
//! `make chaos` runs it for longer.

mod support;

#[test]
fn a_short_chaos_run_loses_nothing() {
    let out = std::process::Command::new(support::bin_path("chaos"))
        .args([
            "--duration",
            "8s",
            "--rate",
            "25",
            "--workers",
            "2",
            "--fault-every",
            "1500ms",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("running chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lost = stdout
        .lines()
        .find(|l| l.starts_with("lost"))
        .expect("an audit line for lost runs");
    assert!(lost.trim_end().ends_with(" 0"), "{lost}");
    let accepted: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("runs accepted"))
        .and_then(|n| n.trim().parse().ok())
        .expect("an audit line for accepted runs");
    assert!(accepted > 100, "the load ran: {stdout}");
}
