//! Which Kubernetes a Flux version needs: the table of Flux minor → minimum Kubernetes
//! minor from Flux's release notes (docs/reference/flux.md#supported-kubernetes-versions),
//! the parsing of Flux versions (`v2.4.0`, `2.4.x`, `2.x`) and of the API server's
//! `gitVersion` (`v1.31.4+k3s1`), and the Flux version a bootstrap manifest says it is.
//! Pure: asking the server and refusing are [`crate::validate`]'s.
//!
//! Both kinds of repository use it: a `flux bootstrap` one through the header comment
//! of gotk-components.yaml ([`flux_version_from_components`]), a Flux Operator one
//! through its FluxInstance's `spec.distribution.version` (a range such as `2.x`).

use std::fmt;

use serde::Serialize;

/// A Kubernetes `major.minor`. Patch levels do not matter here: Flux states its
/// requirements per minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        KubeVersion { major, minor }
    }

    /// The version in an API server's `gitVersion` (`/version`): `v1.31.4+k3s1`,
    /// `v1.30.2`, `1.29`, `v1.32.0-rc.1`. `None` for anything without a numeric major
    /// and minor.
    pub fn parse(git_version: &str) -> Option<KubeVersion> {
        let core = git_version.trim().trim_start_matches('v');
        let core = core.split(['+', '-']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KubeVersion { major, minor })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One row of the table: from this Flux minor on, Kubernetes must be at least this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Flux `2.<minor>`.
    pub flux_minor: u32,
    pub min_kubernetes: KubeVersion,
    /// Where the number comes from (docs/reference/flux.md has the links).
    pub source: &'static str,
}

/// Flux 2 minor → minimum Kubernetes minor, oldest first. Only rows checked against an
/// upstream source are here (docs/reference/flux.md#supported-kubernetes-versions); a
/// Flux minor between two rows gets the older row's minimum, which is a lower bound:
/// Flux raises its minimum with its minors and never lowers it.
pub const TABLE: &[Row] = &[
    Row {
        flux_minor: 0,
        min_kubernetes: KubeVersion::new(1, 24),
        source: "fluxcd/flux2#4020, before v2.0.0",
    },
    Row {
        flux_minor: 1,
        min_kubernetes: KubeVersion::new(1, 25),
        source: "fluxcd/flux2#4126 and the v2.1.0 release notes",
    },
    Row {
        flux_minor: 3,
        min_kubernetes: KubeVersion::new(1, 28),
        source: "fluxcd/flux2#4781, before v2.3.0",
    },
    Row { flux_minor: 5, min_kubernetes: KubeVersion::new(1, 30), source: "fluxcd/flux2#5200, v2.5.0" },
    Row {
        flux_minor: 6,
        min_kubernetes: KubeVersion::new(1, 31),
        source: "fluxcd/flux2#5364, before v2.6.0",
    },
    Row {
        flux_minor: 7,
        min_kubernetes: KubeVersion::new(1, 32),
        source: "fluxcd/flux2#5533 and fluxcd/website#2353, before v2.7.0",
    },
    Row {
        flux_minor: 8,
        min_kubernetes: KubeVersion::new(1, 33),
        source: "fluxcd/flux2#5730 and fluxcd/website#2460, before v2.8.0",
    },
];

/// What a Flux version needs from the cluster, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// As the repository says it (`v2.6.0`, `2.x`).
    pub flux_version: String,
    pub min_kubernetes: KubeVersion,
    /// How the minimum was found: the table row and its source, and, for a range or a
    /// minor the table lacks, what it was resolved to.
    pub source: String,
}

/// A Flux version as written: an exact release, or a range of minors or patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FluxVersion {
    /// `v2.4.0`, `2.4`, `2.4.x`: one minor.
    Minor(u32),
    /// `2`, `2.x`, `2.*`: any Flux 2 release.
    AnyMinor,
}

fn parse_flux(version: &str) -> Option<FluxVersion> {
    let v = version.trim().trim_start_matches('v');
    let core = v.split(['+', '-']).next()?;
    let mut parts = core.split('.');
    if parts.next()? != "2" {
        return None;
    }
    let wildcard = |s: &str| matches!(s, "x" | "X" | "*");
    let minor = match parts.next() {
        None => return Some(FluxVersion::AnyMinor),
        Some(m) if wildcard(m) => return Some(FluxVersion::AnyMinor),
        Some(m) => m.parse().ok()?,
    };
    match parts.next() {
        None => {}
        Some(p) if wildcard(p) || p.parse::<u32>().is_ok() => {}
        Some(_) => return None,
    }
    parts.next().is_none().then_some(FluxVersion::Minor(minor))
}

/// What `flux_version` needs, or `None` when it is not a Flux 2 version this can read
/// (`latest`, a Flux 0.x or 1 version, a semver expression such as `>=2.4 <2.6`). A
/// range (`2.x`, `2.4.x`) is taken at the most demanding release the table knows it
/// can resolve to, and [`Requirement::source`] says so; a minor newer than the table
/// gets the newest row's minimum, a lower bound.
pub fn requirement(flux_version: &str) -> Option<Requirement> {
    let parsed = parse_flux(flux_version)?;
    let newest = TABLE.last()?;
    let (row, how) = match parsed {
        FluxVersion::AnyMinor => (
            newest,
            format!(
                "{flux_version} can resolve to any Flux 2 release: taken at the most demanding known one, \
                 Flux 2.{}",
                newest.flux_minor
            ),
        ),
        FluxVersion::Minor(m) => {
            let row = TABLE.iter().rev().find(|r| r.flux_minor <= m).or(TABLE.first())?;
            let how = if row.flux_minor == m {
                format!("Flux 2.{m}")
            } else if m > newest.flux_minor {
                format!("Flux 2.{m} is newer than the table: at least what Flux 2.{} needs", row.flux_minor)
            } else {
                format!(
                    "Flux 2.{m} is not in the table: at least what Flux 2.{} needs (Flux never lowers its minimum)",
                    row.flux_minor
                )
            };
            (row, how)
        }
    };
    Some(Requirement {
        flux_version: flux_version.trim().to_owned(),
        min_kubernetes: row.min_kubernetes,
        source: format!("{how}; {}", row.source),
    })
}

/// The lowest Kubernetes `flux_version` runs on ([`requirement`]).
pub fn min_kubernetes(flux_version: &str) -> Option<KubeVersion> {
    requirement(flux_version).map(|r| r.min_kubernetes)
}

/// The header comment `flux install --export` and `flux bootstrap` write at the top of
/// gotk-components.yaml (fluxcd/flux2 pkg/manifestgen/install `GetGenWarning`):
/// `# Flux Version: v2.6.0`.
const VERSION_COMMENT: &str = "# Flux Version:";

/// The Flux version gotk-components.yaml says it is (`v2.9.3`), from its header comment;
/// `None` if the file has none (edited by hand, or not written by `flux`).
pub fn flux_version_from_components(text: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty() || l.trim() == "---")
        .find_map(|l| l.strip_prefix(VERSION_COMMENT))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_parse_as_k3s_and_kubernetes_write_them() {
        assert_eq!(KubeVersion::parse("v1.31.4+k3s1"), Some(KubeVersion::new(1, 31)));
        assert_eq!(KubeVersion::parse("v1.28.5"), Some(KubeVersion::new(1, 28)));
        assert_eq!(KubeVersion::parse("v1.32.0-rc.1+k3s1"), Some(KubeVersion::new(1, 32)));
        assert_eq!(KubeVersion::parse("1.30"), Some(KubeVersion::new(1, 30)));
        assert_eq!(KubeVersion::parse("v1"), None);
        assert_eq!(KubeVersion::parse("unknown"), None);
        assert!(KubeVersion::new(1, 9) < KubeVersion::new(1, 10), "numeric, not text, order");
        assert_eq!(KubeVersion::new(1, 30).to_string(), "1.30");
    }

    #[test]
    fn the_table_is_ordered_and_only_raises_the_minimum() {
        for w in TABLE.windows(2) {
            assert!(w[0].flux_minor < w[1].flux_minor, "{w:?}");
            assert!(w[0].min_kubernetes < w[1].min_kubernetes, "{w:?}");
        }
    }

    #[test]
    fn exact_versions_use_their_row() {
        let k = |v: &str| min_kubernetes(v).map(|k| k.to_string());
        assert_eq!(k("v2.6.0").as_deref(), Some("1.31"));
        assert_eq!(k("2.5.1").as_deref(), Some("1.30"));
        assert_eq!(k("v2.7.3").as_deref(), Some("1.32"));
        assert_eq!(k("v2.8.0-rc.1").as_deref(), Some("1.33"));
        assert_eq!(k("v2.0.1").as_deref(), Some("1.24"));
        assert_eq!(
            requirement("v2.6.0").map(|r| r.source).as_deref().map(|s| s.starts_with("Flux 2.6;")),
            Some(true)
        );
    }

    #[test]
    fn minors_missing_from_the_table_get_a_lower_bound_and_say_so() {
        let r = requirement("v2.4.0").expect("2.4");
        assert_eq!(r.min_kubernetes, KubeVersion::new(1, 28));
        assert!(
            r.source.contains("Flux 2.4 is not in the table: at least what Flux 2.3 needs"),
            "{}",
            r.source
        );
        let r = requirement("v2.9.3").expect("2.9");
        assert_eq!(r.min_kubernetes, KubeVersion::new(1, 33));
        assert!(r.source.contains("newer than the table"), "{}", r.source);
    }

    #[test]
    fn ranges_take_the_most_demanding_release_they_can_resolve_to() {
        assert_eq!(min_kubernetes("2.4.x"), Some(KubeVersion::new(1, 28)));
        assert_eq!(min_kubernetes("2.6.*"), Some(KubeVersion::new(1, 31)));
        assert_eq!(min_kubernetes("2.6"), Some(KubeVersion::new(1, 31)));
        let r = requirement("2.x").expect("2.x");
        assert_eq!(r.min_kubernetes, TABLE.last().expect("rows").min_kubernetes);
        assert!(r.source.contains("most demanding known one"), "{}", r.source);
        assert_eq!(r.flux_version, "2.x");
        assert_eq!(min_kubernetes("v2"), Some(KubeVersion::new(1, 33)));
    }

    #[test]
    fn what_is_not_a_flux_2_version_has_no_requirement() {
        for v in ["latest", "v0.41.2", "1.25.0", ">=2.4.0 <2.6.0", "2.4.0.1", "2.a", "", "2.4.y"] {
            assert_eq!(requirement(v), None, "{v:?}");
        }
    }

    #[test]
    fn the_header_comment_of_gotk_components_gives_the_version() {
        let text = "---\n# This manifest was generated by flux. DO NOT EDIT.\n# Flux Version: v2.9.3\n\
                    # Components: source-controller,kustomize-controller\napiVersion: v1\nkind: Namespace\n";
        assert_eq!(flux_version_from_components(text).as_deref(), Some("v2.9.3"));
        // Only the header counts: a comment further down is someone else's.
        let later = "apiVersion: v1\nkind: Namespace\n# Flux Version: v2.0.0\n";
        assert_eq!(flux_version_from_components(later), None);
        assert_eq!(flux_version_from_components("# Flux Version:   \n"), None);
        assert_eq!(flux_version_from_components(""), None);
    }
}
