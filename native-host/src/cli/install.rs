//! `sdm install`: copy this binary to `$XDG_BIN_HOME` or `~/.local/bin` (`%LOCALAPPDATA%\Programs\sdm` on Windows)
//! and register that copy with every supported browser found (or those named); `--dir` registers this binary where it
//! is, for a browser profile of its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use sdm::install::{self, Browser, ExtensionId, ManifestFormat, Outcome, Target};
use sdm::paths;

use super::parse;
use super::print::out;

#[derive(Args)]
pub struct InstallArgs {
    /// A browser to register with: chrome, chromium, brave, edge, vivaldi, firefox, librewolf, snap-chromium,
    /// snap-firefox [default: every one found]
    #[arg(long = "browser", value_name = "NAME", value_parser = parse::browser)]
    browsers: Vec<Browser>,
    /// Register this binary, where it is, in this folder (a Chromium-format manifest, e.g.
    /// <user-data-dir>/NativeMessagingHosts); nothing is copied
    #[arg(long, value_name = "DIR", conflicts_with = "browsers")]
    dir: Option<PathBuf>,
    /// With --dir: also allow this Chromium extension id (repeatable), e.g. an unpacked copy of the store package,
    /// whose id comes from its folder
    #[arg(long = "extension-id", value_name = "ID", requires = "dir")]
    extension_ids: Vec<ExtensionId>,
    /// Remove the manifests (of the browsers named, or all) instead; `sdm uninstall` removes everything
    #[arg(long)]
    uninstall: bool,
}

pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let env = paths::Env::current();
    if args.uninstall {
        let targets: Vec<Target> = match args.dir {
            Some(dir) => vec![Target::Dir(dir, ManifestFormat::Chromium, Vec::new())],
            None if args.browsers.is_empty() => all_browsers(),
            None => args.browsers.into_iter().map(Target::Browser).collect(),
        };
        let removed = print_removed(&install::uninstall(&targets, &env)?)?;
        if removed == 0 {
            out("nothing to remove: no sdm host manifest was installed there")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = args.dir {
        let exe = install::current_exe()?;
        let targets = [Target::Dir(
            dir,
            ManifestFormat::Chromium,
            args.extension_ids,
        )];
        print_registered(&install::install(&targets, &exe, &env)?, &exe)?;
        return Ok(ExitCode::SUCCESS);
    }

    let browsers = if args.browsers.is_empty() {
        install::detect(&env)
    } else {
        args.browsers
    };
    // Checked before anything is copied: an install that registers nowhere changes nothing.
    if browsers.is_empty() {
        print_flatpaks(&env)?;
        return Err(install::InstallError::NoBrowser.into());
    }
    // Every folder is worked out before anything is written, so a browser that cannot be placed changes nothing.
    for browser in &browsers {
        browser.manifest_dir(&env)?;
    }
    let exe = install::current_exe()?;
    let xdg_bin_home = std::env::var_os("XDG_BIN_HOME").map(PathBuf::from);
    let bin = install::bin_dir(&env, xdg_bin_home.as_deref())?;
    let (installed, copied) = install::install_binary(&exe, &bin)?;
    if copied {
        out(format_args!(
            "installed {} (from {})",
            installed.display(),
            exe.display()
        ))?;
    } else {
        out(format_args!("{} is up to date", installed.display()))?;
    }
    let targets: Vec<Target> = browsers.into_iter().map(Target::Browser).collect();
    print_registered(&install::install(&targets, &installed, &env)?, &installed)?;
    print_flatpaks(&env)?;
    if !on_path(&bin) {
        out(format_args!(
            "note: {} is not on PATH: browsers find sdm without it, but to type `sdm` add it to PATH",
            bin.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every browser SDM knows, for removal.
pub fn all_browsers() -> Vec<Target> {
    Browser::ALL.into_iter().map(Target::Browser).collect()
}

fn print_registered(done: &[Outcome], exe: &Path) -> anyhow::Result<()> {
    for o in done {
        let what = if o.changed {
            "registered"
        } else {
            "already registered"
        };
        out(format_args!(
            "{}: {what} {} in {}",
            o.target,
            exe.display(),
            o.path.display()
        ))?;
    }
    Ok(())
}

/// Print each manifest removed; returns how many.
pub fn print_removed(done: &[Outcome]) -> anyhow::Result<usize> {
    let mut removed = 0;
    for o in done.iter().filter(|o| o.changed) {
        out(format_args!("{}: removed {}", o.target, o.path.display()))?;
        removed += 1;
    }
    Ok(removed)
}

/// Say which Flatpak browsers were seen and why they are left alone.
fn print_flatpaks(env: &paths::Env) -> anyhow::Result<()> {
    for app in install::detect_flatpaks(env) {
        out(format_args!(
            "flatpak {app}: not registered: a Flatpak browser's sandbox cannot start programs outside it (see the README, Install)"
        ))?;
    }
    Ok(())
}

fn on_path(dir: &Path) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|p| p == dir))
}
