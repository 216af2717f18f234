//! Which K3s release this node should run: a rollout's pin, `[k3s] version`, or a
//! channel resolved now, with the SHA-256 the release publishes. Resolving is
//! observation (the answer is outside the node), so it happens in `observe`.

use elysium_installer::download::DownloadError;
use elysium_installer::k3s_binary::{self, K3sArtifactError};
use elysium_installer::k3s_release::{Arch, K3sRelease, Pins, UrlError, VersionSelector};
use elysium_installer::k3s_version::{K3sVersion, VersionError};

use super::K3sStep;
use super::journal::{Installed, K3sState};

/// The release to run is not known.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Artifact(#[from] K3sArtifactError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Url(#[from] UrlError),
}

impl K3sStep {
    /// The release to run, resolving a channel and fetching the published hash
    /// only when what is installed does not already answer the question.
    pub(super) async fn target(
        &self,
        section: &elysium_spec::K3sSection,
        pin: &str,
        state: &K3sState,
        binary_sha: Option<&str>,
    ) -> Result<(Installed, String), ReleaseError> {
        // A rollout's pin outranks [k3s]: the coordinator moves nodes one by one.
        let pinned = (!pin.is_empty()).then_some(pin);
        let selector = match (pinned.or(section.version.as_deref()), &section.channel) {
            (Some(v), _) => VersionSelector::Pinned(v.parse::<K3sVersion>()?),
            (None, Some(c)) => VersionSelector::Channel(c.clone()),
            (None, None) => VersionSelector::Channel("stable".into()),
        };
        let release = K3sRelease {
            version: selector.clone(),
            channel_url: section.channel_url.clone(),
            release_url: section.release_url.clone(),
            arch: self.arch,
            pins: pins(section, self.arch),
        };
        if let (VersionSelector::Pinned(v), Some(installed)) = (&selector, &state.installed)
            && installed.version == v.to_string()
            && binary_sha == Some(installed.sha256.as_str())
        {
            let url = release.binary_url(v).map(|u| u.to_string()).unwrap_or_default();
            return Ok((installed.clone(), url));
        }
        let version = k3s_binary::resolve_version(&self.fetcher, &release).await?;
        let sha = k3s_binary::published_hash(&self.fetcher, &release, &version).await?;
        let url = release.binary_url(&version)?;
        Ok((Installed { version: version.to_string(), sha256: sha.to_string() }, url.to_string()))
    }
}

/// The spec's `[k3s.sha256]` pins for this node's architecture. A pin that does not
/// parse cannot be there (the spec is validated), and is skipped if it were.
fn pins(section: &elysium_spec::K3sSection, arch: Arch) -> Pins {
    let by_version = section
        .sha256
        .iter()
        .filter_map(|(version, arches)| {
            let hex = arches.get(arch.hash_file_arch())?;
            Some((version.clone(), hex.parse().ok()?))
        })
        .collect();
    Pins { by_version, required: section.needs_pins() }
}
