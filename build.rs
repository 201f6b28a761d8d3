//! Embeds the git commit and tag for `GET /v1/version` (env `GIT_SHA` /
//! `GIT_TAG` at run time override them, for images built without `.git`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

fn main() {
    let sha = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let tag = git(&["describe", "--tags", "--exact-match"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ENRICHD_GIT_SHA={sha}");
    println!("cargo:rustc-env=ENRICHD_GIT_TAG={tag}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
}
