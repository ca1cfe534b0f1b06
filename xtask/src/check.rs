//! `cargo xtask check`: the cross-target checks that need no other machine.
//!
//! - `--macos`: `cargo clippy --all-targets -D warnings` (which type-checks as `cargo check` does) of `sdm` for
//!   `aarch64-apple-darwin`. There is no Apple SDK here, and ring compiles C: clang builds it freestanding against
//!   three stub headers (the `TARGET_OS_*` macros, a no-op `assert`, the declarations of the string functions ring
//!   calls), written into `target/`. Nothing is linked, so the stubs only have to get the C through the compiler.
//! - `--windows`: `cargo build` of `sdm` for `x86_64-pc-windows-gnu` with Debian's mingw-w64.
//! - `--wine`: [`test_windows`] (also `cargo xtask test --windows`): the library tests of `protocol` and `sdm` built
//!   for Windows and run under Debian's wine ([`test_windows_libs`]), then `sdm.exe` end to end under wine
//!   ([`test_windows_e2e`], the scenario in `wine.rs`; alone with `--wine-e2e`), in a prefix of their own
//!   (`target/wine-prefix`). Wine 8 lacks `bcryptprimitives.dll`, whose `ProcessPrng` Rust's standard library
//!   imports, so every Rust program fails to start there (status c0000135); a small DLL built here with mingw-w64
//!   exports it (filling the buffer from `RtlGenRandom`) and is put in the prefix's `system32`.
//!
//! Missing pieces (the rustup targets, Debian's clang, mingw-w64 and wine64) are installed, and each install is
//! announced.

mod wine;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::tools::{self, cargo, output, root, run, which};

/// The wine loader itself: Debian's `wine` wrapper exits 53 on these programs.
const WINE: &str = "/usr/lib/wine/wine64";

/// `ProcessPrng` (what Rust's standard library takes its random bytes from on Windows 10 and later), for wine.
const PROCESS_PRNG_C: &str = r#"#include <windows.h>

/* RtlGenRandom, exported by advapi32 under this name. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
"#;

const MACOS_TARGET: &str = "aarch64-apple-darwin";
const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

/// The SDK headers ring's C includes, reduced to what it uses.
const DARWIN_STUBS: &[(&str, &str)] = &[
    (
        "TargetConditionals.h",
        "#pragma once\n#define TARGET_OS_MAC 1\n#define TARGET_OS_OSX 1\n#define TARGET_OS_IPHONE 0\n\
         #define TARGET_OS_IOS 0\n#define TARGET_OS_WATCH 0\n#define TARGET_OS_TV 0\n\
         #define TARGET_OS_SIMULATOR 0\n#define TARGET_OS_EMBEDDED 0\n",
    ),
    ("assert.h", "#pragma once\n#define assert(x) ((void)0)\n"),
    (
        "string.h",
        "#pragma once\n#include <stddef.h>\nvoid *memcpy(void *, const void *, size_t);\n\
         void *memset(void *, int, size_t);\nvoid *memmove(void *, const void *, size_t);\n\
         int memcmp(const void *, const void *, size_t);\nsize_t strlen(const char *);\n",
    ),
];

const USAGE: &str = "usage: cargo xtask check [--macos | --windows | --wine | --wine-e2e] (--macos and --windows when none is given)";

pub fn run_check(args: &[String]) -> Result<()> {
    let (macos, windows) = match args {
        [] => (true, true),
        [a] if a == "--macos" => (true, false),
        [a] if a == "--windows" => (false, true),
        [a] if a == "--wine" => return test_windows(),
        [a] if a == "--wine-e2e" => return test_windows_e2e(),
        _ => bail!("{USAGE}"),
    };
    if macos {
        check_macos()?;
    }
    if windows {
        build_windows()?;
    }
    Ok(())
}

/// `cargo clippy --all-targets -D warnings` of `sdm` for macOS on Apple silicon: the type-check and the lints in one pass.
pub fn check_macos() -> Result<()> {
    ensure_target(MACOS_TARGET)?;
    ensure_apt("clang", "clang")?;
    let stubs = write_darwin_stubs()?;
    let darwin = |cmd: &mut Command| {
        cmd.env("CC_aarch64_apple_darwin", "clang").env(
            "CFLAGS_aarch64_apple_darwin",
            format!(
                "--target=arm64-apple-macos11 -ffreestanding -nostdlibinc -I{}",
                stubs.display()
            ),
        );
    };
    // clippy is `cargo check` with the lints on top: one pass over every target instead of two.
    let mut clippy = cargo();
    clippy.current_dir(root()).args([
        "clippy",
        "--target",
        MACOS_TARGET,
        "-p",
        "sdm",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    darwin(&mut clippy);
    run(&mut clippy)?;
    println!("xtask: sdm type-checks and is clippy clean for {MACOS_TARGET}");
    Ok(())
}

/// `cargo build` of `sdm` for Windows, with mingw-w64's linker.
pub fn build_windows() -> Result<()> {
    ensure_windows_toolchain()?;
    run(cargo()
        .current_dir(root())
        .args(["build", "--target", WINDOWS_TARGET, "-p", "sdm"]))?;
    println!("xtask: sdm builds for {WINDOWS_TARGET}");
    Ok(())
}

/// The Windows target and the mingw-w64 cross toolchain.
pub fn ensure_windows_toolchain() -> Result<()> {
    ensure_target(WINDOWS_TARGET)?;
    ensure_apt("x86_64-w64-mingw32-gcc", "mingw-w64")
}

/// The Windows tests under wine: the library tests, then the end-to-end scenario.
pub fn test_windows() -> Result<()> {
    test_windows_libs()?;
    test_windows_e2e()
}

/// The Windows toolchain, wine, and the prefix with the `ProcessPrng` DLL.
fn ensure_wine() -> Result<PathBuf> {
    ensure_windows_toolchain()?;
    if !std::path::Path::new(WINE).is_file() {
        ensure_apt_package("wine64")?;
    }
    wine_prefix()
}

/// `cargo test --target x86_64-pc-windows-gnu -p protocol -p sdm --lib`, run under wine.
pub fn test_windows_libs() -> Result<()> {
    let prefix = ensure_wine()?;
    run(cargo()
        .current_dir(root())
        .args([
            "test",
            "--target",
            WINDOWS_TARGET,
            "-p",
            "protocol",
            "-p",
            "sdm",
            "--lib",
            "--no-fail-fast",
        ])
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER", WINE)
        .env("WINEPREFIX", &prefix)
        .env("WINEDEBUG", "-all"))?;
    println!("xtask: the library tests of protocol and sdm pass for {WINDOWS_TARGET} under wine");
    Ok(())
}

/// `sdm.exe` built for Windows, then driven end to end under wine: a download through the service over its named
/// pipe, the relay, `sdm install` into the registry of a throwaway copy of the prefix, `sdm uninstall`.
pub fn test_windows_e2e() -> Result<()> {
    let prefix = ensure_wine()?;
    run(cargo().current_dir(root()).args([
        "build",
        "--target",
        WINDOWS_TARGET,
        "-p",
        "sdm",
        "--bin",
        "sdm",
    ]))?;
    let exe = crate::build::target_dir()
        .join(WINDOWS_TARGET)
        .join("debug")
        .join("sdm.exe");
    wine::scenario(WINE, &exe, &prefix)?;
    println!("xtask: sdm.exe works end to end under wine (service, relay, install, uninstall)");
    Ok(())
}

/// `target/wine-prefix`, made on first use, with the `ProcessPrng` DLL in its `system32`.
fn wine_prefix() -> Result<PathBuf> {
    let target = root().join("target");
    let prefix = target.join("wine-prefix");
    let system32 = prefix.join("drive_c/windows/system32");
    if !system32.is_dir() {
        println!("xtask: making the wine prefix {}", prefix.display());
        run(Command::new(WINE)
            .args(["wineboot", "--init"])
            .env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all"))?;
    }
    let dll = target.join("wine").join("bcryptprimitives.dll");
    if !dll.is_file() {
        let dir = target.join("wine");
        std::fs::create_dir_all(&dir)?;
        let source = dir.join("processprng.c");
        std::fs::write(&source, PROCESS_PRNG_C)?;
        run(Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-s", "-o"])
            .arg(&dll)
            .arg(&source)
            .arg("-ladvapi32"))?;
    }
    let placed = system32.join("bcryptprimitives.dll");
    if std::fs::read(&placed).ok() != Some(std::fs::read(&dll)?) {
        std::fs::copy(&dll, &placed)?;
    }
    Ok(prefix)
}

/// The stub headers in `target/darwin-stubs/`, rewritten only when they differ (so ring's C is not rebuilt for
/// nothing).
fn write_darwin_stubs() -> Result<PathBuf> {
    let dir = root().join("target").join("darwin-stubs");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in DARWIN_STUBS {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
            std::fs::write(&path, text)?;
        }
    }
    Ok(dir)
}

/// The rustup target `target`, added when missing.
fn ensure_target(target: &str) -> Result<()> {
    let list = output(Command::new("rustup").args(["target", "list", "--installed"]));
    match list {
        Some(list) if list.lines().any(|l| l.trim() == target) => Ok(()),
        Some(_) => {
            println!("xtask: installing the {target} target (rustup target add)");
            run(Command::new("rustup").args(["target", "add", target]))
        }
        // Without rustup the toolchain must already have the target; cargo says so if not.
        None => Ok(()),
    }
}

/// The Debian package `package`, installed when `program` is not on PATH (as root only).
fn ensure_apt(program: &str, package: &str) -> Result<()> {
    if which(program).is_some() {
        return Ok(());
    }
    ensure_apt_package(package)
}

/// Install the Debian package `package` (as root only).
fn ensure_apt_package(package: &str) -> Result<()> {
    if !tools::is_root() || which("apt-get").is_none() {
        bail!("install Debian's `{package}` (apt-get install {package}): it is missing");
    }
    println!("xtask: installing Debian's {package} (apt-get install {package})");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", package]))
}
