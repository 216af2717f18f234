pub mod testnode;
pub mod harness;
pub mod e2e;
