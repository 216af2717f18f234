pub mod testnode;
