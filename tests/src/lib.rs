pub mod azurite;
pub mod bench;
pub mod e2e;
pub mod fleet;
pub mod harness;
pub mod logs;
pub mod mirror;
pub mod testnode;
