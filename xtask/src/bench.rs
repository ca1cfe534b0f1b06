//! `cargo xtask bench`: the download benchmark (owned by the benchmark work; this is its placeholder).

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
