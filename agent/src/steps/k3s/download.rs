//! The K3s binary's download: streamed, verified against the published SHA-256
//! while it arrives, resumable, and reported as progress, on a terminal as a bar
//! and always as events to the coordinator. Nothing on the node changes until the
//! hash matches; the caller commits the verified file.

use elysium_host::Host;
use elysium_installer::download::{Progress, VerifiedDownload};
use elysium_installer::k3s_release::Sha256Digest;

use super::{K3sError, K3sStep, plan};

impl K3sStep {
    pub(super) async fn download(
        &self,
        host: &Host,
        install: &plan::Install,
    ) -> Result<VerifiedDownload, K3sError> {
        let url = url::Url::parse(&install.url)
            .map_err(|source| K3sError::BadUrl { url: install.url.clone(), source })?;
        let expected: Sha256Digest = install.to.sha256.parse().map_err(K3sError::BadHash)?;
        let link = self.link.clone();
        let version = install.to.version.clone();
        let mut last_percent = -1i32;
        // On a terminal (the agent run by hand), a bar; under systemd, progress
        // events to the coordinator (and both in any case through `link`).
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("K3s {version}"));
            bar
        });
        let progress_bar = bar.clone();
        let progress = move |p: Progress| {
            if let Some(bar) = &progress_bar {
                if let Some(total) = p.total {
                    bar.set_length(total);
                }
                bar.set_position(p.downloaded);
            }
            let percent =
                p.total.map(|t| (p.downloaded * 100).checked_div(t).map_or(100, |v| v as i32)).unwrap_or(-1);
            if percent != last_percent && (percent % 10 == 0 || percent < 0) {
                last_percent = percent;
                link.progress(
                    "k3s-install",
                    "download",
                    format!("K3s {version}: {} bytes", p.downloaded),
                    percent,
                );
            }
        };
        let result = self
            .fetcher
            .download_verified(&host.fs, &url, &self.binary(), &expected, progress)
            .await
            .map_err(K3sError::from);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        result
    }
}
