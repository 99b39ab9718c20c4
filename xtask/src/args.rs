//! A small command-line parser: a command, `--flag value` options, and sizes
//! such as `512MiB`.

use anyhow::{Context, Result, bail};

pub(crate) struct Args {
    rest: Vec<String>,
}

impl Args {
    pub(crate) fn from_env() -> Self {
        Self {
            rest: std::env::args().skip(1).collect(),
        }
    }

    /// The first argument, if any.
    pub(crate) fn command(&mut self) -> Option<String> {
        (!self.rest.is_empty()).then(|| self.rest.remove(0))
    }

    /// The next argument if it is not an option.
    pub(crate) fn positional(&mut self) -> Option<String> {
        match self.rest.first() {
            Some(a) if !a.starts_with("--") => Some(self.rest.remove(0)),
            _ => None,
        }
    }

    /// The value of `--name value` or `--name=value`.
    pub(crate) fn value(&mut self, name: &str) -> Result<Option<String>> {
        let prefix = format!("{name}=");
        if let Some(i) = self.rest.iter().position(|a| a.starts_with(&prefix)) {
            return Ok(Some(self.rest.remove(i)[prefix.len()..].to_owned()));
        }
        let Some(i) = self.rest.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.rest.len() {
            bail!("{name} needs a value");
        }
        let v = self.rest.remove(i + 1);
        self.rest.remove(i);
        Ok(Some(v))
    }

    /// Whether `--name` is present (and remove it).
    pub(crate) fn flag(&mut self, name: &str) -> bool {
        match self.rest.iter().position(|a| a == name) {
            Some(i) => {
                self.rest.remove(i);
                true
            }
            None => false,
        }
    }

    pub(crate) fn number(&mut self, name: &str) -> Result<Option<u64>> {
        self.value(name)?
            .map(|v| {
                v.parse()
                    .with_context(|| format!("{name} {v:?} is not a number"))
            })
            .transpose()
    }

    pub(crate) fn size(&mut self, name: &str) -> Result<Option<u64>> {
        self.value(name)?
            .map(|v| parse_size(&v).with_context(|| format!("{name} {v:?} is not a size")))
            .transpose()
    }

    /// Fail if anything was not understood.
    pub(crate) fn finish(&self) -> Result<()> {
        if let Some(a) = self.rest.first() {
            bail!("unexpected argument {a:?} (see `cargo xtask help`)");
        }
        Ok(())
    }
}

/// `4096`, `64KiB`, `512MiB`, `2GiB`, `1.5G` (powers of 1024 either way).
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().context("no number")?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => bail!("unknown unit {u:?}"),
    };
    Ok((num * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
