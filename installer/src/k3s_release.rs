//! Where a K3s release lives and how to read what it publishes: the spec inputs
//! (version or channel, mirror URLs, architecture), the download URLs with
//! install.sh's architecture naming, and the `sha256sum-<arch>.txt` hash file.
//!
//! Pure functions only; fetching is in [`crate::download`] and the install in
//! [`crate::k3s_binary`].

use std::fmt;
use std::str::FromStr;

use reqwest::Url;

use crate::k3s_version::K3sVersion;

/// Where K3s releases are published (install.sh `GITHUB_URL`).
pub const DEFAULT_RELEASE_URL: &str = "https://github.com/k3s-io/k3s/releases";
/// The channel server (install.sh `INSTALL_K3S_CHANNEL_URL` default).
pub const DEFAULT_CHANNEL_URL: &str = "https://update.k3s.io/v1-release/channels";
/// install.sh's `INSTALL_K3S_CHANNEL` default.
pub const DEFAULT_CHANNEL: &str = "stable";

/// A CPU architecture K3s publishes binaries for, named as install.sh names them
/// (`setup_verify_arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
    /// 32-bit ARM (armv7 hard-float). ⚠ The hash file says `arm`, the binary `armhf`.
    Arm,
    S390x,
}

impl Arch {
    /// Maps `uname -m` (or Rust's `std::env::consts::ARCH`) the way install.sh does:
    /// `x86_64|amd64`, `arm64|aarch64`, `arm*`, `s390x`.
    pub fn from_machine(machine: &str) -> Option<Arch> {
        match machine {
            "x86_64" | "amd64" => Some(Arch::Amd64),
            "aarch64" | "arm64" => Some(Arch::Arm64),
            "s390x" => Some(Arch::S390x),
            m if m.starts_with("arm") => Some(Arch::Arm),
            _ => None,
        }
    }

    /// The architecture this program was built for, which is the node's.
    pub fn host() -> Option<Arch> {
        Arch::from_machine(std::env::consts::ARCH)
    }

    /// The `<arch>` of `sha256sum-<arch>.txt`.
    pub fn hash_file_arch(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Arm => "arm",
            Arch::S390x => "s390x",
        }
    }

    /// install.sh's `SUFFIX`: what follows `k3s` in the binary's release name.
    pub fn binary_suffix(self) -> &'static str {
        match self {
            Arch::Amd64 => "",
            Arch::Arm64 => "-arm64",
            Arch::Arm => "-armhf",
            Arch::S390x => "-s390x",
        }
    }

    /// The binary's name in a release (`k3s`, `k3s-arm64`, `k3s-armhf`...). It is
    /// installed as plain `k3s` whatever this is.
    pub fn binary_name(self) -> String {
        format!("k3s{}", self.binary_suffix())
    }

    /// The hash file's name in a release.
    pub fn hash_file_name(self) -> String {
        format!("sha256sum-{}.txt", self.hash_file_arch())
    }
}

/// Which K3s version a node should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// Exactly this release (`version = "v1.31.4+k3s1"`).
    Pinned(K3sVersion),
    /// Whatever the channel server names for this channel now (`channel = "stable"`).
    Channel(String),
}

/// The spec inputs for getting a K3s binary. Plain data with install.sh's
/// defaults; the cluster spec maps onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sRelease {
    pub version: VersionSelector,
    /// Base of the channel server; `{channel_url}/{channel}` redirects to the release.
    pub channel_url: String,
    /// Base of the release files: `{release_url}/download/{version}/...`. May be an
    /// `http(s)://` mirror or a `file://` directory with the same layout (a path on
    /// the machine the agent runs on, not below the node's root).
    pub release_url: String,
    pub arch: Arch,
    /// Binary hashes the operator pinned, which outrank the release's hash file.
    pub pins: Pins,
}

/// SHA-256 pins of the binary, by version, for one architecture (`[k3s.sha256]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub by_version: std::collections::BTreeMap<String, Sha256Digest>,
    /// Only pinned versions may be installed: the URLs are plain `http://`, so the
    /// hash file is no better than the binary it vouches for.
    pub required: bool,
}

impl K3sRelease {
    /// install.sh's defaults (channel `stable`, GitHub, the channel server) for `arch`.
    pub fn new(arch: Arch) -> Self {
        K3sRelease {
            version: VersionSelector::Channel(DEFAULT_CHANNEL.to_string()),
            pins: Pins::default(),
            channel_url: DEFAULT_CHANNEL_URL.to_string(),
            release_url: DEFAULT_RELEASE_URL.to_string(),
            arch,
        }
    }

    /// The binary of `version`: `{release_url}/download/{version}/k3s{suffix}`.
    pub fn binary_url(&self, version: &K3sVersion) -> Result<Url, UrlError> {
        release_file_url(&self.release_url, version, &self.arch.binary_name())
    }

    /// The hash file of `version`: `{release_url}/download/{version}/sha256sum-{arch}.txt`.
    pub fn hash_file_url(&self, version: &K3sVersion) -> Result<Url, UrlError> {
        release_file_url(&self.release_url, version, &self.arch.hash_file_name())
    }

    /// Where the channel server is asked about `channel`: `{channel_url}/{channel}`.
    pub fn channel_request_url(&self, channel: &str) -> Result<Url, UrlError> {
        let text = format!("{}/{}", self.channel_url.trim_end_matches('/'), channel);
        parse_url("channel_url", &text)
    }
}

/// A URL built from the spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} gives the URL {url:?}, which is not valid; it should look like {example}")]
pub struct UrlError {
    pub field: &'static str,
    pub url: String,
    pub example: &'static str,
    #[source]
    pub source: url::ParseError,
}

fn release_file_url(release_url: &str, version: &K3sVersion, file: &str) -> Result<Url, UrlError> {
    // The `+` in a version goes into the path as %2B. GitHub serves both spellings
    // (install.sh sends a literal `+`; GitHub's own tag and asset links use %2B),
    // but %2B is the only one every server reads the same way: S3-style object
    // stores, a common home for mirrors, decode a literal `+` in a path as a space
    // (kubernetes/kops#2098, rust-lang/crates.io#4891). Plain static file servers
    // and `file://` decode %2B back to `+`, the directory name on disk.
    let version = version.to_string().replace('+', "%2B");
    let text = format!("{}/download/{version}/{file}", release_url.trim_end_matches('/'));
    parse_url("release_url", &text)
}

fn parse_url(field: &'static str, text: &str) -> Result<Url, UrlError> {
    let example = match field {
        "channel_url" => DEFAULT_CHANNEL_URL,
        _ => "https://github.com/k3s-io/k3s/releases or file:///srv/k3s",
    };
    Url::parse(text).map_err(|source| UrlError { field, url: text.to_string(), example, source })
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl FromStr for Sha256Digest {
    type Err = hex::FromHexError;

    /// 64 hex digits, either case (sha256sum prints lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Sha256Digest(out))
    }
}

/// A hash file that does not say what the binary's hash is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashFileError {
    #[error("it has no line for {name}; the release may not publish a binary for this architecture")]
    NotListed { name: String },
    #[error("line {line} for {name} does not start with a 64-digit hex SHA-256")]
    Malformed { name: String, line: usize },
    #[error("it lists {name} twice with different hashes (lines {first} and {second})")]
    Conflicting { name: String, first: usize, second: usize },
}

/// The hash of `name` in `sha256sum` output (`<hex>  <name>`, or `<hex> *<name>` in
/// binary mode), matching the name exactly as install.sh's `grep " k3s${SUFFIX}$"`
/// does: asking for `k3s` never picks `k3s-arm64` or `k3s-airgap-images-amd64.tar`.
/// Lines for other files are not checked; only the one we need must be well formed.
pub fn parse_hash_file(text: &str, name: &str) -> Result<Sha256Digest, HashFileError> {
    let mut found: Option<(usize, Sha256Digest)> = None;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim_end_matches('\r');
        let Some((hash, rest)) = line.split_once(char::is_whitespace) else { continue };
        // sha256sum separates with two characters: a space, then a space (text
        // mode) or `*` (binary mode). Accept any run of blanks before either.
        let listed = rest.trim_start_matches([' ', '\t']);
        let listed = listed.strip_prefix('*').unwrap_or(listed);
        if listed != name {
            continue;
        }
        let digest = match hash.parse::<Sha256Digest>() {
            Ok(d) if hash.len() == 64 => d,
            _ => return Err(HashFileError::Malformed { name: name.to_string(), line: line_no }),
        };
        match found {
            Some((first, earlier)) if earlier != digest => {
                return Err(HashFileError::Conflicting { name: name.to_string(), first, second: line_no });
            }
            Some(_) => {}
            None => found = Some((line_no, digest)),
        }
    }
    found.map(|(_, d)| d).ok_or_else(|| HashFileError::NotListed { name: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const H3: &str = "aBcD333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn arch_naming_follows_install_sh() {
        assert_eq!(Arch::from_machine("x86_64"), Some(Arch::Amd64));
        assert_eq!(Arch::from_machine("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_machine("arm64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_machine("armv7l"), Some(Arch::Arm));
        assert_eq!(Arch::from_machine("arm"), Some(Arch::Arm));
        assert_eq!(Arch::from_machine("riscv64"), None);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Arch::host(), Some(Arch::Amd64));
        }

        let names = |a: Arch| (a.binary_name(), a.hash_file_name());
        assert_eq!(names(Arch::Amd64), ("k3s".into(), "sha256sum-amd64.txt".into()));
        assert_eq!(names(Arch::Arm64), ("k3s-arm64".into(), "sha256sum-arm64.txt".into()));
        // The quirk: 32-bit ARM's hash file is `arm`, its binary `armhf`.
        assert_eq!(names(Arch::Arm), ("k3s-armhf".into(), "sha256sum-arm.txt".into()));
        assert_eq!(names(Arch::S390x), ("k3s-s390x".into(), "sha256sum-s390x.txt".into()));
    }

    #[test]
    fn release_urls_encode_the_plus_and_tolerate_a_trailing_slash() {
        let v: K3sVersion = "v1.31.4+k3s1".parse().unwrap();
        let mut rel = K3sRelease::new(Arch::Arm);
        assert_eq!(
            rel.binary_url(&v).unwrap().as_str(),
            "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s-armhf"
        );
        assert_eq!(
            rel.hash_file_url(&v).unwrap().as_str(),
            "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/sha256sum-arm.txt"
        );
        assert_eq!(
            rel.channel_request_url("stable").unwrap().as_str(),
            "https://update.k3s.io/v1-release/channels/stable"
        );

        rel.release_url = "file:///srv/k3s/".into();
        rel.arch = Arch::Amd64;
        let url = rel.binary_url(&v).unwrap();
        assert_eq!(url.as_str(), "file:///srv/k3s/download/v1.31.4%2Bk3s1/k3s");
        // On disk the directory is the version as written, with its `+`.
        assert_eq!(url.to_file_path().unwrap(), std::path::Path::new("/srv/k3s/download/v1.31.4+k3s1/k3s"));

        rel.release_url = "not a url".into();
        let err = rel.binary_url(&v).unwrap_err();
        assert_eq!(err.field, "release_url");
        assert!(err.to_string().contains("not a url"), "{err}");
    }

    #[test]
    fn picks_exactly_the_named_binary() {
        let file = format!(
            "{H1}  k3s-airgap-images-amd64.tar\n\
             {H2}  k3s-arm64\n\
             {H3}  k3s\n\
             {H1}  k3s-airgap-images-amd64.tar.zst\n"
        );
        assert_eq!(parse_hash_file(&file, "k3s").unwrap().to_string(), H3.to_lowercase());
        assert_eq!(parse_hash_file(&file, "k3s-arm64").unwrap().to_string(), H2);
        assert_eq!(
            parse_hash_file(&file, "k3s-armhf").unwrap_err(),
            HashFileError::NotListed { name: "k3s-armhf".into() }
        );
        // Only airgap tarballs and a different arch: `k3s` must not match any of them.
        let no_binary = format!("{H1}  k3s-airgap-images-amd64.tar\n{H2}  k3s-arm64\n{H2}  xk3s\n");
        assert!(matches!(parse_hash_file(&no_binary, "k3s"), Err(HashFileError::NotListed { .. })));
    }

    #[test]
    fn accepts_binary_mode_crlf_and_blank_lines() {
        let file = format!("\r\n{H2} *k3s-arm64\r\n\n{H1} *k3s\r\n");
        assert_eq!(parse_hash_file(&file, "k3s").unwrap().to_string(), H1);
        assert_eq!(parse_hash_file(&file, "k3s-arm64").unwrap().to_string(), H2);
    }

    #[test]
    fn refuses_a_bad_or_ambiguous_line_for_the_wanted_name() {
        let short = format!("{H1}  k3s-arm64\n{}  k3s\n", &H2[..63]);
        assert_eq!(
            parse_hash_file(&short, "k3s"),
            Err(HashFileError::Malformed { name: "k3s".into(), line: 2 })
        );
        let not_hex = format!("{}zz  k3s\n", &H2[..62]);
        assert!(matches!(parse_hash_file(&not_hex, "k3s"), Err(HashFileError::Malformed { .. })));
        let twice = format!("{H1}  k3s\n{H2}  k3s\n");
        assert_eq!(
            parse_hash_file(&twice, "k3s"),
            Err(HashFileError::Conflicting { name: "k3s".into(), first: 1, second: 2 })
        );
        // The same line twice is harmless.
        assert!(parse_hash_file(&format!("{H1}  k3s\n{H1}  k3s\n"), "k3s").is_ok());
        // A malformed line for another file does not matter.
        assert!(parse_hash_file(&format!("garbage  k3s-arm64\n{H1}  k3s\n"), "k3s").is_ok());
    }
}
