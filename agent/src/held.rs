//! The spec this node holds, parsed once: when it arrives over the session or is
//! loaded at start-up. The agent service publishes it on one watch channel (in the
//! link); the session, the reconcile loop and the sealing-key watch subscribe, so
//! no one parses the TOML again or polls `spec.json`.

use std::sync::Arc;

use elysium_spec::{ClusterSpec, SpecError};

use crate::reconcile::Desired;
use crate::state::HeldSpec;

/// The held spec, parsed once when it arrived or was loaded: `desired` is what
/// the reconciler applies, or why this agent cannot use the spec.
#[derive(Debug)]
pub struct Held {
    pub spec: HeldSpec,
    pub desired: Result<Desired, SpecError>,
}

impl Held {
    pub fn new(spec: HeldSpec) -> Arc<Self> {
        let desired = Desired::from_held(&spec);
        Arc::new(Self { spec, desired })
    }

    /// The parsed cluster spec, when usable.
    pub fn cluster(&self) -> Option<&ClusterSpec> {
        self.desired.as_ref().ok().map(|d| &d.spec)
    }
}
