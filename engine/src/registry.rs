//! The plugin registry: kind name -> factory, for enrichers and outputs.
//!
//! The binary fills it (`enrichd_plugins::register_all`); the core only ever
//! looks factories up by the `plugin = "..."` name of a chain entry or the
//! `type = "..."` of an `[[output]]` entry.

use crate::output::OutputFactory;
use crate::plugin::PluginFactory;

#[derive(Default)]
pub struct Registry {
    factories: Vec<Box<dyn PluginFactory>>,
    outputs: Vec<Box<dyn OutputFactory>>,
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
    pub fn register_output(&mut self, factory: Box<dyn OutputFactory>) {
        assert!(self.output(factory.kind()).is_none(), "output kind {:?} registered twice", factory.kind());
        self.outputs.push(factory);
    }

    pub fn output(&self, kind: &str) -> Option<&dyn OutputFactory> {
        self.outputs.iter().find(|f| f.kind() == kind).map(|f| &**f)
    }

    pub fn outputs(&self) -> impl Iterator<Item = &dyn OutputFactory> {
        self.outputs.iter().map(|f| &**f)
    }
}
