use super::*;
use crate::batch::BatchView;
use crate::config::Config;
use crate::plugin::{source_info, BuildContext, Enricher, PluginFactory};

thread_local! {
    /// Builds of the word plugin on this thread (reloads run on the
    /// caller's thread).
    static BUILDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A plugin whose data is one file holding a word; "bad" fails to load.
struct WordFactory;
struct Word(PluginStatus);

impl PluginFactory for WordFactory {
    fn kind(&self) -> &'static str {
        "word"
    }
    fn description(&self) -> &'static str {
        "test plugin"
    }
    fn options_schema(&self) -> schemars::Schema {
        schemars::json_schema!({})
    }
    fn build(&self, options: &toml::Table, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        BUILDS.with(|b| b.set(b.get() + 1));
        let path = ctx.resolve_path(options["file"].as_str().unwrap());
        ctx.output_key("word");
        let mut status = match std::fs::read(&path) {
            Ok(bytes) if bytes == b"bad" => anyhow::bail!("{}: bad content", path.display()),
            Ok(bytes) => {
                let mut s = PluginStatus::new(PluginState::Loaded);
                s.version = Some(String::from_utf8(bytes.clone()).unwrap());
                s.sources.push(source_info(&path, &bytes));
                s
            }
            Err(_) => {
                let mut s = PluginStatus::new(PluginState::Missing);
                s.error = Some("file not found".into());
                s
            }
        };
        if status.sources.is_empty() {
            status.sources.push(crate::plugin::SourceInfo {
                path,
                sha256: None,
                size_bytes: None,
                loaded_at: None,
                error: None,
            });
        }
        Ok(Box::new(Word(status)))
    }
}

impl Enricher for Word {
    fn enrich(&self, _batch: &mut BatchView<'_>) {}
    fn status(&self) -> PluginStatus {
        self.0.clone()
    }
}

fn engine(dir: &Path) -> Engine {
    let text = "[[chain]]\nplugin = \"word\"\nname = \"a\"\nfile = \"a.txt\"\n\
                [[chain]]\nplugin = \"word\"\nname = \"b\"\nfile = \"b.txt\"\n";
    let config = Config::parse(text, &dir.join("config.toml")).unwrap();
    let mut registry = Registry::new();
    registry.register(Box::new(WordFactory));
    let chain = Chain::build(&config.chain, &registry, dir).unwrap();
    Engine::new(chain, registry)
}

fn version(engine: &Engine, stage: usize) -> Option<String> {
    engine.chain().reports()[stage].status.version.clone()
}

#[test]
fn reload_swaps_only_the_changed_stage_and_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, "one").unwrap();
    std::fs::write(&b, "uno").unwrap();
    let engine = engine(dir.path());
    let before = engine.chain();

    std::fs::write(&a, "two").unwrap();
    let report = engine.reload_paths(std::slice::from_ref(&a));
    assert!(report.swapped);
    assert_eq!(report.stages.len(), 1, "only the stage watching a.txt is rebuilt");
    let after = engine.chain();
    assert_eq!(after.generation(), 2);
    assert_eq!(version(&engine, 0).as_deref(), Some("two"));
    assert!(Arc::ptr_eq(&before.stages[1], &after.stages[1]), "b is reused, not rebuilt");
    assert_eq!(after.stages[0].generation, 2);

    // Same content: nothing swapped.
    assert!(!engine.reload_all().swapped);

    // A broken file and a vanished file are refused; "two" stays.
    for broken in [Some("bad"), None] {
        match broken {
            Some(text) => std::fs::write(&a, text).unwrap(),
            None => std::fs::remove_file(&a).unwrap(),
        }
        let report = engine.reload_paths(std::slice::from_ref(&a));
        assert_eq!(report.stages[0].outcome, Outcome::Rejected);
        assert!(!report.swapped);
        assert_eq!(version(&engine, 0).as_deref(), Some("two"));
    }
    let r = &engine.chain().reports()[0];
    assert_eq!((r.reloads, r.reload_failures), (1, 2));
    assert!(r.last_reload_error.as_deref().unwrap().contains("keeping generation 2"));

    // The next good write is taken and clears the error.
    std::fs::write(&a, "three").unwrap();
    engine.reload_paths(std::slice::from_ref(&a));
    assert_eq!(version(&engine, 0).as_deref(), Some("three"));
    assert!(engine.chain().reports()[0].last_reload_error.is_none());
}

#[test]
fn a_write_seen_again_is_not_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.txt");
    std::fs::write(&a, "one").unwrap();
    std::fs::write(dir.path().join("b.txt"), "uno").unwrap();
    let engine = engine(dir.path());
    let builds = || BUILDS.with(|b| b.get());
    let reload = |expected: Outcome, built: usize| {
        let before = builds();
        let report = engine.reload_paths(std::slice::from_ref(&a));
        assert_eq!(report.stages[0].outcome, expected);
        assert_eq!(builds() - before, built, "builds for {expected:?}");
    };
    std::fs::write(&a, "two").unwrap();
    reload(Outcome::Reloaded, 1);
    // The same write reported again (an updater's reload, then the
    // watcher's), or rewritten with the same bytes: nothing is built.
    reload(Outcome::Unchanged, 0);
    std::fs::write(&a, "two").unwrap();
    reload(Outcome::Unchanged, 0);
    // Same size, other bytes: rebuilt.
    std::fs::write(&a, "owt").unwrap();
    reload(Outcome::Reloaded, 1);
    assert_eq!(version(&engine, 0).as_deref(), Some("owt"));
    // A refused file stays refused until it changes, then a write back
    // to what is live clears the refusal without a build.
    std::fs::write(&a, "bad").unwrap();
    reload(Outcome::Rejected, 1);
    std::fs::write(&a, "owt").unwrap();
    reload(Outcome::Unchanged, 0);
    assert!(engine.chain().reports()[0].last_reload_error.is_none());
    // An explicit reload builds every stage anyway.
    let before = builds();
    assert!(!engine.reload_all().swapped);
    assert_eq!(builds() - before, 2);
}

#[test]
fn a_batch_keeps_the_chain_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one").unwrap();
    std::fs::write(dir.path().join("b.txt"), "uno").unwrap();
    let engine = engine(dir.path());
    let in_flight = engine.chain();
    std::fs::write(dir.path().join("a.txt"), "two").unwrap();
    engine.reload_all();
    assert_eq!(in_flight.reports()[0].status.version.as_deref(), Some("one"));
    assert_eq!(version(&engine, 0).as_deref(), Some("two"));
}

#[test]
fn chain_entries_apply_with_untouched_stages_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one").unwrap();
    std::fs::write(dir.path().join("b.txt"), "uno").unwrap();
    std::fs::write(dir.path().join("c.txt"), "eins").unwrap();
    let engine = engine(dir.path());
    let before = engine.chain();
    // Reorder, drop a, add c.
    let text = "[[chain]]\nplugin = \"word\"\nname = \"c\"\nfile = \"c.txt\"\n\
                [[chain]]\nplugin = \"word\"\nname = \"b\"\nfile = \"b.txt\"\n";
    let config = Config::parse(text, &dir.path().join("config.toml")).unwrap();
    let report = engine.apply_entries(&config.chain).unwrap();
    assert!(report.swapped);
    let outcomes: Vec<Outcome> = report.stages.iter().map(|s| s.outcome).collect();
    assert_eq!(outcomes, [Outcome::Added, Outcome::Kept]);
    let after = engine.chain();
    assert!(Arc::ptr_eq(&before.stages[1], &after.stages[1]));
    // An unknown plugin refuses the whole change.
    let bad = Config::parse("[[chain]]\nplugin = \"nope\"\n", &dir.path().join("config.toml")).unwrap();
    assert!(engine.apply_entries(&bad.chain).unwrap_err().to_string().contains("unknown plugin"));
    assert_eq!(engine.chain().generation(), after.generation());
}

/// Prepared entries go live only when committed, and a stage a watched
/// file swapped in meanwhile is not undone by the commit.
#[test]
fn prepared_entries_go_live_at_commit_over_a_reload_in_between() {
    let dir = tempfile::tempdir().unwrap();
    for (f, t) in [("a.txt", "one"), ("b.txt", "uno"), ("c.txt", "eins")] {
        std::fs::write(dir.path().join(f), t).unwrap();
    }
    let engine = engine(dir.path());
    let text = "[[chain]]\nplugin = \"word\"\nname = \"a\"\nfile = \"a.txt\"\n\
                [[chain]]\nplugin = \"word\"\nname = \"c\"\nfile = \"c.txt\"\n";
    let config = Config::parse(text, &dir.path().join("config.toml")).unwrap();
    let generation = engine.chain().generation();
    let prepared = engine.prepare_entries(&config.chain).unwrap();
    assert_eq!(engine.chain().generation(), generation, "nothing live yet");
    std::fs::write(dir.path().join("a.txt"), "two").unwrap();
    engine.reload_all();
    assert_eq!(version(&engine, 0).as_deref(), Some("two"));
    let report = engine.commit_entries(prepared, &config.chain).unwrap();
    assert!(report.swapped);
    let names: Vec<String> = engine.chain().reports().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(version(&engine, 0).as_deref(), Some("two"), "the reload in between stays");
    // A chain that does not build is refused at prepare, before anything.
    let bad = Config::parse("[[chain]]\nplugin = \"nope\"\n", &dir.path().join("config.toml")).unwrap();
    let live = engine.chain().generation();
    assert!(engine.prepare_entries(&bad.chain).is_err());
    assert_eq!(engine.chain().generation(), live);
}

#[test]
fn paths_affect_their_stage() {
    let w = Path::new("/etc/enrichd/ti");
    assert!(affects(Path::new("/etc/enrichd/ti"), w));
    assert!(affects(Path::new("/etc/enrichd/ti/new.txt"), w));
    assert!(affects(Path::new("/etc/enrichd"), w));
    assert!(!affects(Path::new("/etc/enrichd/other.txt"), w));
    assert!(!affects(Path::new("/etc/enrichd/ti/sub/deep.txt"), w));
}

#[test]
fn health_orders_reload_acceptance() {
    let mut clean = PluginStatus::new(PluginState::Loaded);
    assert_eq!(health(&clean), Health::Clean);
    clean.error = Some("one file unreadable".into());
    assert_eq!(health(&clean), Health::Degraded);
    assert!(Health::Absent < Health::Degraded && Health::Degraded < Health::Clean);
    assert_eq!(health(&PluginStatus::new(PluginState::Missing)), Health::Absent);
    assert_eq!(health(&PluginStatus::new(PluginState::Error)), Health::Absent);
}
