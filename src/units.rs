//! Sizes as operators write them. Two readings, because the two audiences differ: disk
//! sizes follow diskimage-builder's layouts (explicit unit, `GB` decimal), memory limits
//! follow `ulimit` and container runtimes (`8G` binary).

/// A size with a unit (`20GiB`, `512MiB`, `8KiB`, `1GB`, `512B`) in bytes, as disk sizes are
/// written: block-device layouts, the manifest's `size`, Swift segment sizes. The unit is
/// required and `GB` is decimal, as diskimage-builder reads them.
pub fn parse_size(s: &str) -> Option<u64> {
    let units: [(&str, u64); 8] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
        ("KB", 1000),
        ("MB", 1000 * 1000),
        ("GB", 1000 * 1000 * 1000),
        ("B", 1),
    ];
    let s = s.trim();
    units.iter().find_map(|(unit, mult)| {
        s.strip_suffix(unit)
            .and_then(|n| n.trim().parse::<u64>().ok())
            .map(|n| n * mult)
    })
}

/// An environment variable that sets a limit but holds something that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLimit {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// A time limit in seconds from `var`: `None` when unset, an error naming it when it is set
/// to anything but a positive number (a typo must not silently give the default).
pub fn seconds_from_env(var: &'static str) -> Result<Option<u64>, BadLimit> {
    match std::env::var(var) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Some(s)),
            _ => Err(BadLimit {
                var,
                value: v,
                expected: "a number of seconds",
            }),
        },
        Err(_) => Ok(None),
    }
}

/// A memory limit from `var` ([`parse_memory`]): `None` when unset, an error naming it when
/// it is not a size of at least 64 MiB (less would stop the limited program itself).
pub fn memory_from_env(var: &'static str) -> Result<Option<u64>, BadLimit> {
    match std::env::var(var) {
        Ok(v) => match parse_memory(&v) {
            Some(b) if b >= 64 << 20 => Ok(Some(b)),
            _ => Err(BadLimit {
                var,
                value: v,
                expected: "a size of at least 64M (e.g. 8G)",
            }),
        },
        Err(_) => Ok(None),
    }
}

/// A memory limit in bytes: `4096`, `512M`, `8G`, `8GiB`, all binary, as `ulimit` and
/// container runtimes read them.
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let shift = match s[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("20GiB"), Some(20 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("20 parsecs"), None);
    }

    #[test]
    fn memory_limits_are_binary() {
        assert_eq!(parse_memory("4096"), Some(4096));
        assert_eq!(parse_memory("512M"), Some(512 << 20));
        assert_eq!(parse_memory("8G"), Some(8 << 30));
        assert_eq!(parse_memory("8GiB"), Some(8 << 30));
        assert_eq!(parse_memory("lots"), None);
    }
}
