//! Records the git commit the simulator was built from, for summary.json.
fn main() {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=ONIONVPN_GIT_REV={}", rev.trim());
    println!("cargo:rerun-if-changed=build.rs");
}
