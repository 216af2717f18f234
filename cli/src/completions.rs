//! `completions SHELL` and the hidden `man --out DIR`: shell completions and man pages
//! generated from the same clap definitions the binary parses with, so they can never
//! name a flag the binary does not have. The Debian package (`packaging/build-deb`)
//! runs both at build time; users of a bare binary run `completions` themselves.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

pub const COMPLETIONS_HELP: &str = "\
Prints the completion script on standard output; install it where your shell looks.
The Debian package installs all three for every user.

Examples:
  elysium-node completions bash > /etc/bash_completion.d/elysium-node
  elysium-node completions bash > ~/.local/share/bash-completion/completions/elysium-node
  elysium-node completions zsh > \"${fpath[1]}/_elysium-node\"
  elysium-node completions fish > ~/.config/fish/completions/elysium-node.fish
  source <(elysium-node completions bash)   # this shell only";

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing); one page per command:
    /// elysium-node.1, elysium-node-join.1, elysium-node-coordinator-init.1, ...
    #[arg(long)]
    pub out: PathBuf,
}

/// A man page that could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum ManError {
    #[error("could not render the man page of `{command}`")]
    Render {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] elysium_host::FsError),
}

/// The full command tree, built (global flags propagated, bin names set) the way
/// clap sees it when parsing.
fn command() -> clap::Command {
    let mut cmd = crate::Cli::command();
    cmd.build();
    cmd
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut crate::Cli::command(), "elysium-node", &mut out);
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    let written = write_man_pages(&args.out)?;
    eprintln!("wrote {} man pages to {}", written.len(), args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Renders one roff page per visible command (the top level and every subcommand, at
/// any depth) into `dir`, named after the command path joined with dashes, section 1.
/// Returns the files written, in tree order.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, ManError> {
    elysium_host::fs::create_dir_all(dir, 0o755)?;
    let mut written = Vec::new();
    for (name, page) in man_pages()? {
        let path = dir.join(format!("{name}.1"));
        elysium_host::fs::write_atomic(&path, &page, 0o644)?;
        written.push(path);
    }
    Ok(written)
}

/// (page name, roff) for every visible command.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>, ManError> {
    let mut pages = Vec::new();
    render(&command(), "elysium-node", &mut pages)?;
    Ok(pages)
}

fn render(cmd: &clap::Command, name: &str, pages: &mut Vec<(String, Vec<u8>)>) -> Result<(), ManError> {
    let mut roff = Vec::new();
    // The page's title is its name (elysium-node-coordinator-init), as `man` looks it up.
    clap_mangen::Man::new(cmd.clone().display_name(name.to_owned()))
        .title(name.to_owned())
        .render(&mut roff)
        .map_err(|source| ManError::Render { command: name.to_owned(), source })?;
    pages.push((name.to_owned(), roff));
    for sub in visible_subcommands(cmd) {
        render(sub, &format!("{name}-{}", sub.get_name()), pages)?;
    }
    Ok(())
}

/// Subcommands a user sees in `--help`: not hidden ones (`man`), not clap's `help`.
pub fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut crate::Cli::command(), "elysium-node", &mut out);
        String::from_utf8(out).expect("completion scripts are UTF-8")
    }

    fn top_level() -> Vec<String> {
        visible_subcommands(&command()).map(|s| s.get_name().to_owned()).collect()
    }

    /// Every subcommand `--help` lists is completed, in every shell we package, and so
    /// are flags further down.
    #[test]
    fn completions_name_every_top_level_subcommand() {
        let names = top_level();
        for expected in ["join", "agent", "coordinator", "secret", "upgrade", "completions", "wait-mount"] {
            assert!(names.iter().any(|n| n == expected), "{expected} is not a subcommand: {names:?}");
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = script(shell);
            for name in &names {
                assert!(text.contains(name.as_str()), "{shell} completion lacks `{name}`");
            }
        }
        let bash = script(Shell::Bash);
        // bash completes subcommands from one word list per command: the top level's has
        // them all (clap_complete also lists the hidden `man`, which is harmless).
        let top = bash
            .lines()
            .find(|l| {
                l.trim_start().starts_with("opts=") && l.contains(" coordinator ") && l.contains(" join ")
            })
            .expect("bash script has the top-level word list");
        for name in &names {
            assert!(
                top.split_whitespace().any(|w| w == name.trim_matches('"')),
                "bash top level lacks {name}: {top}"
            );
        }
        // Flags deeper down too: `secret set --from-file`.
        assert!(bash.contains("--from-file"), "bash completion lacks secret set --from-file");
        assert!(script(Shell::Fish).contains("from-file"));
    }

    /// One page per visible command at every depth, each a roff document whose title is
    /// the page's own name and that describes its flags.
    #[test]
    fn man_pages_for_every_subcommand_are_roff() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_man_pages(dir.path()).expect("man pages written");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().expect("file name").to_string_lossy().into_owned())
            .collect();

        // Every visible command, recursively, has its page.
        fn walk(cmd: &clap::Command, name: &str, want: &mut Vec<String>) {
            want.push(format!("{name}.1"));
            for sub in visible_subcommands(cmd) {
                walk(sub, &format!("{name}-{}", sub.get_name()), want);
            }
        }
        let mut want = Vec::new();
        walk(&command(), "elysium-node", &mut want);
        assert_eq!(names, want);
        for page in [
            "elysium-node.1",
            "elysium-node-join.1",
            "elysium-node-coordinator-init.1",
            "elysium-node-secret-set.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("-man") || n.contains("-help")), "{names:?}");

        for path in &written {
            let text = std::fs::read_to_string(path).expect("page readable");
            let stem = path.file_stem().expect("stem").to_string_lossy().into_owned();
            let th = text.lines().find(|l| l.starts_with(".TH ")).unwrap_or_else(|| panic!("{stem}: no .TH"));
            assert!(th.starts_with(&format!(".TH {stem} 1")), "{stem}: title line {th:?}");
            assert!(text.contains(".SH NAME") && text.contains(".SH SYNOPSIS"), "{stem}: sections missing");
        }
        let join = std::fs::read_to_string(dir.path().join("elysium-node-join.1")).expect("join page");
        assert!(join.contains("token\\-file"), "join's page lacks --token-file");
        assert!(join.contains("Examples"), "join's page lacks its examples");
    }
}
