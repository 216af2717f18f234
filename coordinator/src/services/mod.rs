//! The three gRPC services of `elysium.v1` and the rules for who may call them.
//!
//! Each service stands on the coordinator's shared state (`state`) and knows
//! nothing of the server that hosts it; the server knows the services.

mod admin;
mod admins;
mod auth;
mod enroll_limit;
mod enrollment;
mod pace;
mod renewal;
mod session;
mod status;
mod vault;

pub(crate) use admin::AdminService;
pub(crate) use auth::AdminGate;
pub use enroll_limit::EnrollLimits;
pub(crate) use enroll_limit::source_key;
pub(crate) use enrollment::EnrollmentService;
pub(crate) use session::SessionService;
pub(crate) use status::bound_status_message;
