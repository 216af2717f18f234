pub mod e2e;
pub mod harness;
pub mod testnode;
pub mod mirror;
