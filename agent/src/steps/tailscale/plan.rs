//! The Tailscale plan: a pure function from what the spec wants and what
//! tailscaled reports to the calls that bring the node there.

use std::fmt;
use std::time::Duration;

use super::localapi::{Prefs, PrefsPatch, Status};

/// Tailscale's own control server, what an empty `ControlURL` means.
pub const DEFAULT_CONTROL_URL: &str = "https://controlplane.tailscale.com";

/// An auth key; shown as `<auth key from secret NAME>`, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey {
    pub secret_name: String,
    pub value: String,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<auth key from secret {}>", self.secret_name)
    }
}

/// What the spec asks of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTailscale {
    pub hostname: String,
    /// Canonical `tag:x`, sorted.
    pub tags: Vec<String>,
    pub accept_routes: bool,
    pub accept_dns: bool,
    /// `None`: leave the control server as it is.
    pub control_url: Option<String>,
    /// K3s will route over `tailscale0`, which userspace networking lacks.
    pub needs_tun: bool,
    pub auth_key: AuthKey,
    pub up_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailscaleAction {
    /// Something only the operator can fix; applying it fails with the message.
    Refuse(String),
    /// `tailscale up --auth-key`: log in with the key and these prefs.
    Login { auth_key: AuthKey, prefs: Prefs },
    /// `tailscale set`: change these prefs only.
    Set(PrefsPatch),
    /// Wait (bounded) for `BackendState` `Running`.
    WaitRunning { timeout: Duration, after_login: Option<String> },
}

impl fmt::Display for TailscaleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailscaleAction::Refuse(why) => write!(f, "refuse: {why}"),
            TailscaleAction::Login { auth_key, prefs } => write!(
                f,
                "log in with the auth key from secret {} as {:?} (tags {}, accept-routes={}, accept-dns={})",
                auth_key.secret_name,
                prefs.hostname,
                prefs.advertise_tags.as_deref().unwrap_or_default().join(","),
                prefs.route_all,
                prefs.corp_dns
            ),
            TailscaleAction::Set(patch) => write!(f, "set {patch}"),
            TailscaleAction::WaitRunning { timeout, .. } => {
                write!(f, "wait up to {}s for tailscaled to be Running", timeout.as_secs())
            }
        }
    }
}

fn same_control(current: &str, wanted: &str) -> bool {
    let norm = |u: &str| {
        let u = u.trim_end_matches('/');
        if u.is_empty() { DEFAULT_CONTROL_URL.to_owned() } else { u.to_owned() }
    };
    norm(current) == norm(wanted)
}

/// The prefs that differ from what the spec wants.
pub fn prefs_diff(desired: &DesiredTailscale, prefs: &Prefs) -> PrefsPatch {
    let mut current_tags = prefs.advertise_tags.clone().unwrap_or_default();
    current_tags.sort();
    PrefsPatch {
        control_url: desired
            .control_url
            .as_ref()
            .filter(|want| !same_control(&prefs.control_url, want))
            .cloned(),
        route_all: (prefs.route_all != desired.accept_routes).then_some(desired.accept_routes),
        corp_dns: (prefs.corp_dns != desired.accept_dns).then_some(desired.accept_dns),
        want_running: None,
        hostname: (prefs.hostname != desired.hostname).then(|| desired.hostname.clone()),
        advertise_tags: (current_tags != desired.tags).then(|| desired.tags.clone()),
    }
}

/// Everything the spec wants, as a patch (for logging in from scratch).
fn full_patch(desired: &DesiredTailscale) -> PrefsPatch {
    PrefsPatch {
        control_url: desired.control_url.clone(),
        route_all: Some(desired.accept_routes),
        corp_dns: Some(desired.accept_dns),
        want_running: Some(true),
        hostname: Some(desired.hostname.clone()),
        advertise_tags: Some(desired.tags.clone()),
    }
}

pub fn plan(desired: &DesiredTailscale, status: &Status, prefs: &Prefs) -> Vec<TailscaleAction> {
    use TailscaleAction::*;
    if desired.needs_tun && !status.tun {
        return vec![Refuse(
            "tailscaled runs with userspace networking (--tun=userspace-networking), so there is no tailscale0 \
             interface for K3s's flannel; run tailscaled with a TUN device (the default), or set \
             [tailscale] k3s = \"off\""
                .into(),
        )];
    }
    let wait = |after_login: Option<String>| WaitRunning { timeout: desired.up_timeout, after_login };
    match status.backend_state.as_str() {
        "Running" => {
            let diff = prefs_diff(desired, prefs);
            if diff.is_empty() { vec![] } else { vec![Set(diff)] }
        }
        "Starting" => {
            let diff = prefs_diff(desired, prefs);
            let mut actions = if diff.is_empty() { vec![] } else { vec![Set(diff)] };
            actions.push(wait(None));
            actions
        }
        // Logged in, switched off (`tailscale down`): switch on, with the settings.
        "Stopped" if !prefs.logged_out => {
            let diff = PrefsPatch { want_running: Some(true), ..prefs_diff(desired, prefs) };
            vec![Set(diff), wait(None)]
        }
        "NeedsLogin" | "NoState" | "Stopped" | "" => vec![
            Login { auth_key: desired.auth_key.clone(), prefs: full_patch(desired).applied_to(prefs) },
            wait(Some(desired.auth_key.secret_name.clone())),
        ],
        "NeedsMachineAuth" => vec![Refuse(
            "this node is logged in but waits for device approval: approve it in the tailnet's admin console \
             (or use a pre-approved auth key)"
                .into(),
        )],
        "InUseOtherUser" => vec![Refuse(
            "tailscaled is in use by another local user; log that user out (`tailscale logout`) first".into(),
        )],
        other => vec![Refuse(format!("tailscaled reports an unknown state {other:?}"))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DesiredTailscale {
        DesiredTailscale {
            hostname: "alpha".into(),
            tags: vec!["tag:k3s".into()],
            accept_routes: false,
            accept_dns: true,
            control_url: None,
            needs_tun: true,
            auth_key: AuthKey { secret_name: "ts".into(), value: "tskey-auth-SECRET".into() },
            up_timeout: Duration::from_secs(60),
        }
    }

    fn status(state: &str) -> Status {
        Status { backend_state: state.into(), tun: true, ..Default::default() }
    }

    fn converged_prefs() -> Prefs {
        Prefs {
            control_url: DEFAULT_CONTROL_URL.into(),
            route_all: false,
            corp_dns: true,
            want_running: true,
            hostname: "alpha".into(),
            advertise_tags: Some(vec!["tag:k3s".into()]),
            logged_out: false,
        }
    }

    #[test]
    fn a_converged_node_needs_nothing() {
        assert!(plan(&desired(), &status("Running"), &converged_prefs()).is_empty());
        // An empty ControlURL means Tailscale's, and a trailing slash is the same URL.
        let d = DesiredTailscale { control_url: Some(format!("{DEFAULT_CONTROL_URL}/")), ..desired() };
        let p = Prefs { control_url: String::new(), ..converged_prefs() };
        assert!(plan(&d, &status("Running"), &p).is_empty());
    }

    #[test]
    fn a_fresh_node_logs_in_with_every_setting_then_waits() {
        let actions = plan(&desired(), &status("NeedsLogin"), &Prefs::default());
        let [TailscaleAction::Login { prefs, .. }, TailscaleAction::WaitRunning { after_login: Some(_), .. }] =
            actions.as_slice()
        else {
            panic!("{actions:?}")
        };
        assert!(prefs.want_running && prefs.corp_dns && !prefs.route_all);
        assert_eq!(
            (prefs.hostname.as_str(), prefs.advertise_tags.as_deref()),
            ("alpha", Some(&["tag:k3s".to_owned()][..]))
        );
        let shown = actions.iter().map(|a| format!("{a} {a:?}")).collect::<String>();
        assert!(!shown.contains("tskey-auth-SECRET"), "{shown}");
    }

    #[test]
    fn changed_settings_are_set_one_by_one_never_a_new_login() {
        let d = DesiredTailscale {
            tags: vec!["tag:k3s".into(), "tag:media".into()],
            accept_routes: true,
            ..desired()
        };
        let actions = plan(&d, &status("Running"), &converged_prefs());
        assert_eq!(
            actions,
            [TailscaleAction::Set(PrefsPatch {
                route_all: Some(true),
                advertise_tags: Some(vec!["tag:k3s".into(), "tag:media".into()]),
                ..Default::default()
            })]
        );
        // Tag order does not matter.
        let p = Prefs {
            advertise_tags: Some(vec!["tag:media".into(), "tag:k3s".into()]),
            route_all: true,
            ..converged_prefs()
        };
        assert!(plan(&d, &status("Running"), &p).is_empty());
    }

    #[test]
    fn a_stopped_node_is_switched_on_without_its_key() {
        let actions =
            plan(&desired(), &status("Stopped"), &Prefs { want_running: false, ..converged_prefs() });
        assert!(
            matches!(&actions[0], TailscaleAction::Set(p) if p.want_running == Some(true)),
            "{actions:?}"
        );
        // Logged out: `down` + `logout` needs the key again.
        let actions = plan(&desired(), &status("Stopped"), &Prefs { logged_out: true, ..converged_prefs() });
        assert!(matches!(&actions[0], TailscaleAction::Login { .. }), "{actions:?}");
    }

    #[test]
    fn userspace_networking_is_refused_only_when_k3s_needs_tailscale0() {
        let userspace = Status { tun: false, ..status("Running") };
        assert!(
            matches!(plan(&desired(), &userspace, &converged_prefs())[0], TailscaleAction::Refuse(ref m) if m.contains("tailscale0"))
        );
        let d = DesiredTailscale { needs_tun: false, ..desired() };
        assert!(plan(&d, &userspace, &converged_prefs()).is_empty());
    }

    #[test]
    fn states_only_a_human_can_fix_are_refused() {
        for state in ["NeedsMachineAuth", "InUseOtherUser", "Exploded"] {
            assert!(
                matches!(
                    plan(&desired(), &status(state), &converged_prefs())[..],
                    [TailscaleAction::Refuse(_)]
                ),
                "{state}"
            );
        }
    }
}
