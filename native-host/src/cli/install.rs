//! `sdm install`: write (or with `--uninstall`, remove) the host manifests that let browsers start `sdm`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sdm::install::{self, Browser, ManifestFormat, Target};
use sdm::paths;

use super::parse;
use super::print::out;

#[derive(Args)]
pub struct InstallArgs {
    /// A browser to register with: chrome, chromium, brave, edge, vivaldi, firefox [default: every one found]
    #[arg(long = "browser", value_name = "NAME", value_parser = parse::browser)]
    browsers: Vec<Browser>,
    /// Write a Chromium-format manifest into this folder instead (e.g. <user-data-dir>/NativeMessagingHosts)
    #[arg(long, value_name = "DIR", conflicts_with = "browsers")]
    dir: Option<PathBuf>,
    /// Remove the manifests instead
    #[arg(long)]
    uninstall: bool,
}

pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let env = paths::Env::current();
    let targets: Vec<Target> = if let Some(dir) = args.dir {
        vec![Target::Dir(dir, ManifestFormat::Chromium)]
    } else if !args.browsers.is_empty() {
        args.browsers.into_iter().map(Target::Browser).collect()
    } else if args.uninstall {
        Browser::ALL.into_iter().map(Target::Browser).collect()
    } else {
        let found = install::detect(&env);
        if found.is_empty() {
            return Err(install::InstallError::NoBrowser.into());
        }
        found.into_iter().map(Target::Browser).collect()
    };
    if args.uninstall {
        let done = install::uninstall(&targets, &env)?;
        let mut removed = 0;
        for o in done.iter().filter(|o| o.changed) {
            out(format_args!("removed {} ({})", o.path.display(), o.target))?;
            removed += 1;
        }
        if removed == 0 {
            out("nothing to remove: no sdm host manifest was installed there")?;
        }
    } else {
        let exe = install::current_exe()?;
        for o in install::install(&targets, &exe, &env)? {
            out(format_args!("wrote {} ({})", o.path.display(), o.target))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
