//! Watched files and directories replaced rather than edited: a directory
//! reached through a symlink swapped the way Kubernetes updates a mounted
//! ConfigMap, a file symlinked the same way, and a file copied in place
//! slowly enough that the watcher's cap reloads it half-written.

use super::*;

/// The indicators matching the target address, without their sources.
fn indicators_of_target(event: &Value) -> String {
    ti_of_target(event).split(',').map(|hit| hit.split('@').next().unwrap_or("")).collect::<Vec<_>>().join(",")
}

/// Publishes `files` (relative path, content) the way the kubelet updates a
/// mounted ConfigMap: written into a new timestamped directory, then the
/// `..data` symlink pointed at it by renaming a new symlink over it (one
/// atomic step), then the previous directory removed.
fn configmap_update(dir: &Path, version: u32, files: &[(&str, String)]) {
    let versioned = format!("..2026_12_08_{version}");
    for (name, content) in files {
        let path = dir.join(&versioned).join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&versioned, &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    if version > 1 {
        fs::remove_dir_all(dir.join(format!("..2026_12_08_{}", version - 1))).unwrap();
    }
}

/// Before, watches were kept by path: the watch on `feeds` (a symlink into
/// `..data`) stayed on the first version's directory, which the first
/// update deleted (that deletion reloaded the stage once), and was never
/// placed again, so the second update went unnoticed.
#[test]
fn a_directory_swapped_like_a_configmap_is_reloaded_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    configmap_update(&d, 1, &[("feeds/a.txt", "198.51.100.1\n".into())]);
    std::os::unix::fs::symlink("..data/feeds", d.join("feeds")).unwrap();
    let server = start(dir, &config(&ti_chain("\"feeds\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    assert_eq!(indicators_of_target(&ingest(&server.base, &probe).unwrap()[0]), "");

    configmap_update(&d, 2, &[("feeds/a.txt", format!("{TARGET}\n"))]);
    wait_for(&server.base, &probe, indicators_of_target, TARGET, LIVE_WITHIN);
    configmap_update(&d, 3, &[("feeds/a.txt", "203.0.113.0/24\n".into())]);
    wait_for(&server.base, &probe, indicators_of_target, "203.0.113.0/24", LIVE_WITHIN);
    configmap_update(&d, 4, &[("feeds/b.txt", "203.0.113.64/26\n".into())]);
    wait_for(&server.base, &probe, indicators_of_target, "203.0.113.64/26", LIVE_WITHIN);
}

/// A file mounted the same way: the swap makes events about `..data` only,
/// which names no stage's path. Before, no update was ever reloaded.
#[test]
fn a_file_symlinked_into_a_swapped_configmap_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    configmap_update(&d, 1, &[("feed.txt", "198.51.100.1\n".into())]);
    std::os::unix::fs::symlink("..data/feed.txt", d.join("feed.txt")).unwrap();
    let server = start(dir, &config(&ti_chain("\"feed.txt\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    assert_eq!(indicators_of_target(&ingest(&server.base, &probe).unwrap()[0]), "");

    configmap_update(&d, 2, &[("feed.txt", format!("{TARGET}\n"))]);
    wait_for(&server.base, &probe, indicators_of_target, TARGET, LIVE_WITHIN);
    configmap_update(&d, 3, &[("feed.txt", "203.0.113.0/24\n".into())]);
    wait_for(&server.base, &probe, indicators_of_target, "203.0.113.0/24", LIVE_WITHIN);
}

/// A copy in place that takes longer than the watcher's cap (1 s), its
/// writes closer together than the debounce: the cap reloads the module
/// half-written, which is refused (the last good rule keeps scoring, no
/// batch sees anything else), and the end of the copy still reloads the
/// whole module. The events of writes after a reload began are queued for
/// the next round, so the final state cannot be missed; this keeps it so.
#[test]
fn a_slow_copy_in_place_is_refused_half_written_and_reloaded_whole() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("rule.wasm");
    fs::copy(repo().join("rules/risk.wasm"), &module).unwrap();
    let chain = "[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"rule.wasm\"\nrole = \"rule\"\n";
    let server = start(dir, &config(chain, ""));
    let probe = flows(2, 23, "192.0.2.1");
    assert_eq!(score(&ingest(&server.base, &probe).unwrap()[0]), "20");
    let load = Load::start(&server.base, flows(50, 23, "192.0.2.1"), "risk", score);

    let new = fs::read(repo().join("rules/examples/admin_ports.wasm")).unwrap();
    let mut file = fs::OpenOptions::new().write(true).truncate(true).open(&module).unwrap();
    let started = Instant::now();
    for chunk in new.chunks(new.len().div_ceil(50)) {
        std::io::Write::write_all(&mut file, chunk).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(file);
    assert!(started.elapsed() > Duration::from_millis(2000), "the copy outlasts the watcher's cap");
    wait_for(&server.base, &probe, score, "70", LIVE_WITHIN);
    load.finish();
    let risk = stage(&server, "risk");
    assert!(risk["reload_failures"].as_u64().unwrap() >= 1, "a half-written module was read and refused: {risk}");
    assert!(risk["last_reload_error"].is_null(), "the complete module's reload clears the refusal: {risk}");
}
