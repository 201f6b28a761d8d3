//! The plugin registry: kind name -> factory, for enrichers, outputs,
//! sources, forwarding targets and data-file updaters.
//!
//! The binary fills it (`enrichd_plugins::register_all`); the core only ever
//! looks factories up by the `plugin = "..."` name of a chain entry or the
//! `type = "..."` of an `[[output]]` or `[[source]]` entry.

use crate::forward::ForwardFactory;
use crate::output::OutputFactory;
use crate::plugin::PluginFactory;
use crate::source::SourceFactory;
use crate::updater::UpdaterFactory;

#[derive(Default)]
pub struct Registry {
    factories: Vec<Box<dyn PluginFactory>>,
    outputs: Vec<Box<OutputFactory>>,
    sources: Vec<Box<SourceFactory>>,
    updaters: Vec<Box<UpdaterFactory>>,
    forwarders: Vec<Box<ForwardFactory>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a factory. Panics on a duplicate kind: that is a programming
    /// error in how the binary assembles its plugins.
    pub fn register(&mut self, factory: Box<dyn PluginFactory>) {
        assert!(self.get(factory.kind()).is_none(), "plugin kind {:?} registered twice", factory.kind());
        self.factories.push(factory);
    }

    pub fn get(&self, kind: &str) -> Option<&dyn PluginFactory> {
        self.factories.iter().find(|f| f.kind() == kind).map(|f| &**f)
    }

    pub fn factories(&self) -> impl Iterator<Item = &dyn PluginFactory> {
        self.factories.iter().map(|f| &**f)
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.kind()).collect()
    }

    /// Adds an output kind. Panics on a duplicate kind, like
    /// [`Registry::register`].
    pub fn register_output(&mut self, factory: Box<OutputFactory>) {
        assert!(self.output(factory.kind()).is_none(), "output kind {:?} registered twice", factory.kind());
        self.outputs.push(factory);
    }

    pub fn output(&self, kind: &str) -> Option<&OutputFactory> {
        self.outputs.iter().find(|f| f.kind() == kind).map(|f| &**f)
    }

    pub fn outputs(&self) -> impl Iterator<Item = &OutputFactory> {
        self.outputs.iter().map(|f| &**f)
    }

    /// Adds a source kind (`[[source]]` entries). Panics on a duplicate
    /// kind, like [`Registry::register`].
    pub fn register_source(&mut self, factory: Box<SourceFactory>) {
        assert!(self.source(factory.kind()).is_none(), "source kind {:?} registered twice", factory.kind());
        self.sources.push(factory);
    }

    pub fn source(&self, kind: &str) -> Option<&SourceFactory> {
        self.sources.iter().find(|f| f.kind() == kind).map(|f| &**f)
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourceFactory> {
        self.sources.iter().map(|f| &**f)
    }

    /// Adds a data-file updater kind (`[[update]]` entries). Panics on a
    /// duplicate kind, like [`Registry::register`].
    pub fn register_updater(&mut self, factory: Box<UpdaterFactory>) {
        assert!(self.updater(factory.kind()).is_none(), "updater kind {:?} registered twice", factory.kind());
        self.updaters.push(factory);
    }

    pub fn updater(&self, kind: &str) -> Option<&UpdaterFactory> {
        self.updaters.iter().find(|f| f.kind() == kind).map(|f| &**f)
    }

    pub fn updaters(&self) -> impl Iterator<Item = &UpdaterFactory> {
        self.updaters.iter().map(|f| &**f)
    }

    /// Adds a forwarding target kind (`[[forward]]` entries). Panics on a
    /// duplicate kind.
    pub fn register_forwarder(&mut self, factory: Box<ForwardFactory>) {
        assert!(self.forwarder(factory.kind()).is_none(), "forward kind {:?} registered twice", factory.kind());
        self.forwarders.push(factory);
    }

    pub fn forwarder(&self, kind: &str) -> Option<&ForwardFactory> {
        self.forwarders.iter().find(|f| f.kind() == kind).map(|f| &**f)
    }

    pub fn forwarders(&self) -> impl Iterator<Item = &ForwardFactory> {
        self.forwarders.iter().map(|f| &**f)
    }
}
