//! Records the git commit the simulator was built from, for summary.json.
//!
//! The stamp must follow the checkout: cargo reruns this script when the files that say
//! which commit is checked out change (HEAD, the branch's ref, packed-refs), not only when
//! the script itself does (which left the first commit it saw in every later build).
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
}

fn main() {
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=ONIONVPN_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=build.rs");
    // A worktree has its own HEAD; branch refs live in the common directory.
    let dir = git(&["rev-parse", "--path-format=absolute", "--git-dir"]);
    let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]);
    let mut watch = Vec::new();
    if let Some(d) = &dir {
        watch.push(format!("{d}/HEAD"));
    }
    if let Some(c) = &common {
        watch.push(format!("{c}/packed-refs"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{c}/{r}"));
        }
    }
    // Only files that exist: cargo treats a missing one as changed on every build.
    for f in watch
        .iter()
        .filter(|f| std::path::Path::new(f.as_str()).exists())
    {
        println!("cargo:rerun-if-changed={f}");
    }
}
