pub mod azurite;
pub mod e2e;
pub mod fleet;
pub mod harness;
pub mod mirror;
pub mod testnode;
