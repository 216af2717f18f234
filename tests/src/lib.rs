pub mod azurite;
pub mod e2e;
pub mod fleet;
pub mod harness;
pub mod logs;
pub mod mirror;
pub mod testnode;
