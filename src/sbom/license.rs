//! The license a Debian package declares, from its `/usr/share/doc/<package>/copyright` in the
//! machine-readable DEP-5 form (`Format: https://www.debian.org/doc/packaging-manuals/
//! copyright-format/1.0/`), as an SPDX license expression.
//!
//! Only what the file states is taken: the `License:` synopsis of every `Files:` paragraph,
//! joined with `AND`. Debian's short names map to SPDX identifiers where the meaning is the
//! same (`GPL-2+` is `GPL-2.0-or-later`, `Expat` is `MIT`); any other name, or a synopsis with
//! an exception clause, becomes a `LicenseRef-` whose text is the file's stand-alone `License:`
//! paragraph of that name. A file that is not DEP-5 declares nothing (`NOASSERTION`).

use std::collections::BTreeMap;

/// A package's declared license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// An SPDX license expression.
    pub expression: String,
    /// `LicenseRef-…` identifiers the expression uses → their text (for the document's
    /// `hasExtractedLicensingInfos`).
    pub refs: BTreeMap<String, String>,
}

/// The longest license text kept for a `LicenseRef-` (a full GPL is about 35 KB).
const MAX_TEXT: usize = 64 << 10;

/// SPDX identifiers written as Debian writes them (compared without case).
const SPDX_IDS: &[&str] = &[
    "0BSD",
    "AFL-2.1",
    "AFL-3.0",
    "Apache-1.0",
    "Apache-1.1",
    "Apache-2.0",
    "APSL-2.0",
    "Artistic-1.0",
    "Artistic-1.0-Perl",
    "Artistic-2.0",
    "Beerware",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-4-Clause",
    "BSL-1.0",
    "bzip2-1.0.6",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "CDDL-1.0",
    "CDDL-1.1",
    "CECILL-2.1",
    "curl",
    "ECL-2.0",
    "EPL-1.0",
    "EPL-2.0",
    "EUPL-1.2",
    "FSFAP",
    "FSFUL",
    "FSFULLR",
    "FTL",
    "HPND",
    "ICU",
    "IJG",
    "ISC",
    "LGPL-2.0-only",
    "LPPL-1.3c",
    "MIT",
    "MIT-0",
    "MPL-1.1",
    "MPL-2.0",
    "NCSA",
    "OFL-1.1",
    "OLDAP-2.8",
    "OpenSSL",
    "PHP-3.01",
    "PostgreSQL",
    "PSF-2.0",
    "Python-2.0",
    "Ruby",
    "Sleepycat",
    "TCL",
    "Unicode-DFS-2016",
    "Unlicense",
    "UPL-1.0",
    "Vim",
    "W3C",
    "WTFPL",
    "X11",
    "Zlib",
    "ZPL-2.1",
];

/// Debian's names for licenses SPDX spells otherwise (compared without case).
const ALIASES: &[(&str, &str)] = &[
    ("Expat", "MIT"),
    ("Apache-2", "Apache-2.0"),
    ("Artistic", "Artistic-1.0"),
    ("Artistic-2", "Artistic-2.0"),
    ("Perl", "Artistic-1.0-Perl OR GPL-1.0-or-later"),
    ("PSF-2", "PSF-2.0"),
    ("Python", "Python-2.0"),
    ("CC0", "CC0-1.0"),
    ("MPL-2", "MPL-2.0"),
    ("Zope-2.1", "ZPL-2.1"),
    ("BSL", "BSL-1.0"),
    ("Boost-1.0", "BSL-1.0"),
];

/// The GNU families, whose Debian names are `<family>-<version>[+]`.
const GNU: &[&str] = &["GPL", "LGPL", "AGPL", "GFDL"];

/// The SPDX expression for one Debian license short name, or `None` when it has none.
fn spdx_for(name: &str) -> Option<String> {
    if let Some(id) = SPDX_IDS.iter().find(|id| id.eq_ignore_ascii_case(name)) {
        return Some((*id).to_string());
    }
    if let Some((_, id)) = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(name)) {
        return Some((*id).to_string());
    }
    // Debian's `GPL-2+`, and SPDX's own `GPL-2.0-or-later` / `GPL-2.0-only`.
    let (base, later) = if let Some(b) = name.strip_suffix('+') {
        (b, true)
    } else if let Some(b) = name.strip_suffix("-or-later") {
        (b, true)
    } else {
        (name.strip_suffix("-only").unwrap_or(name), false)
    };
    let (family, version) = base.split_once('-')?;
    let family = GNU.iter().find(|f| f.eq_ignore_ascii_case(family))?;
    let version = match version {
        "1" | "1.0" => "1.0",
        "2" | "2.0" => "2.0",
        "2.1" => "2.1",
        "3" | "3.0" => "3.0",
        "1.1" | "1.2" | "1.3" if *family == "GFDL" => version,
        _ => return None,
    };
    let known = match *family {
        "GPL" => ["1.0", "2.0", "3.0"].contains(&version),
        "LGPL" => ["2.0", "2.1", "3.0"].contains(&version),
        "AGPL" => ["1.0", "3.0"].contains(&version),
        _ => ["1.1", "1.2", "1.3"].contains(&version),
    };
    known.then(|| {
        format!(
            "{family}-{version}-{}",
            if later { "or-later" } else { "only" }
        )
    })
}

/// `LicenseRef-<name>` with every character SPDX does not allow in an id made `-`.
pub fn license_ref(name: &str) -> String {
    // `+` (a later version) is spelled out, so `GPLv2` and `GPLv2+` stay two licenses.
    let clean = idstring(&name.replace('+', "-plus"));
    format!("LicenseRef-{}", clean.trim_matches('-'))
}

/// `name` in SPDX's idstring alphabet (letters, digits, `.` and `-`), every other character
/// a `-`: what SPDXRef and LicenseRef ids are made of.
pub(crate) fn idstring(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// One paragraph of a DEP-5 file: field name (lower case) → (first line, continuation lines).
type Paragraph = BTreeMap<String, (String, Vec<String>)>;

fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut cur = Paragraph::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(field) = &last
                && let Some((_, more)) = cur.get_mut(field)
            {
                let l = line.trim();
                // A line of a single `.` is an empty line of the text.
                more.push(if l == "." {
                    String::new()
                } else {
                    l.to_string()
                });
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            cur.insert(name.clone(), (value.trim().to_string(), Vec::new()));
            last = Some(name);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The SPDX expression of one `License:` synopsis (`GPL-2+ or Artistic`), and the names it
/// refers to that SPDX does not know. A synopsis SPDX cannot say (an exception clause, two
/// names with no `or`/`and` between them) is one `LicenseRef-` as a whole.
fn synopsis(s: &str) -> (String, Vec<String>) {
    let whole = || (license_ref(s), vec![s.to_string()]);
    if s.to_ascii_lowercase().contains(" with ") {
        return whole();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut unknown = Vec::new();
    let mut want_name = true;
    for word in s.split_whitespace() {
        let word = word.trim_end_matches(',');
        if word.is_empty() {
            continue;
        }
        let connector = match word.to_ascii_lowercase().as_str() {
            "or" => Some("OR"),
            "and" => Some("AND"),
            _ => None,
        };
        match (connector, want_name) {
            (Some(c), false) => {
                parts.push(c.to_string());
                want_name = true;
            }
            (None, true) => {
                match spdx_for(word) {
                    Some(id) if id.contains(" OR ") => parts.push(format!("({id})")),
                    Some(id) => parts.push(id),
                    None => {
                        parts.push(license_ref(word));
                        unknown.push(word.to_string());
                    }
                }
                want_name = false;
            }
            _ => return whole(),
        }
    }
    if want_name {
        return whole();
    }
    (parts.join(" "), unknown)
}

/// A license as a package header states it (rpm's `License`: SPDX expressions on recent
/// distributions, free-form names on older ones): known names mapped, the rest (and anything
/// parenthesized) `LicenseRef-`s whose text is the name itself.
pub fn from_name(name: &str) -> Declared {
    let (expression, unknown) = if name.contains(['(', ')']) {
        (license_ref(name), vec![name.to_string()])
    } else {
        synopsis(name)
    };
    Declared {
        expression,
        refs: unknown.into_iter().map(|n| (license_ref(&n), n)).collect(),
    }
}

/// The declared license of a copyright file, `None` when it is not machine-readable or
/// declares nothing.
pub fn from_dep5(text: &str) -> Option<Declared> {
    let paras = paragraphs(text);
    let header = paras.first()?;
    let format = &header.get("format")?.0;
    if !(format.contains("copyright-format") || format.contains("dep5") || format.contains("DEP-5"))
    {
        return None;
    }
    // Stand-alone license paragraphs: name → text.
    let texts: BTreeMap<String, String> = paras
        .iter()
        .skip(1)
        .filter(|p| !p.contains_key("files"))
        .filter_map(|p| {
            let (name, lines) = p.get("license")?;
            Some((name.clone(), lines.join("\n")))
        })
        .collect();
    let mut terms: Vec<String> = Vec::new();
    let mut refs = BTreeMap::new();
    for p in paras.iter().skip(1).filter(|p| p.contains_key("files")) {
        let Some((syn, lines)) = p.get("license") else {
            continue;
        };
        if syn.is_empty() {
            continue;
        }
        let (expr, unknown) = synopsis(syn);
        for name in unknown {
            let text = texts
                .get(&name)
                .filter(|t| !t.trim().is_empty())
                .cloned()
                .or_else(|| (name == *syn && !lines.is_empty()).then(|| lines.join("\n")))
                .unwrap_or_else(|| {
                    format!("The license `{name}` named in the package's copyright file.")
                });
            let mut text = text;
            if text.len() > MAX_TEXT {
                let mut end = MAX_TEXT;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            refs.entry(license_ref(&name)).or_insert(text);
        }
        // `A and B` adds A and B, each once; an alternative stays one term.
        let new: Vec<String> = if expr.contains(" OR ") {
            if expr.starts_with('(') && expr.ends_with(')') && !expr[1..].contains('(') {
                vec![expr]
            } else {
                vec![format!("({expr})")]
            }
        } else {
            expr.split(" AND ").map(str::to_string).collect()
        };
        for term in new {
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
    }
    if terms.is_empty() {
        return None;
    }
    let expression = if terms.len() == 1 {
        terms[0]
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .filter(|t| !t.contains('('))
            .unwrap_or(&terms[0])
            .to_string()
    } else {
        terms.join(" AND ")
    };
    Some(Declared { expression, refs })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASH: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: example
Source: https://example.org

Files: *
Copyright: 1987-2022 Free Software Foundation, Inc.
License: GPL-3+

Files: lib/sh/*.c
Copyright: 2001 Someone
License: GPL-2+ or Artistic

Files: support/*
Copyright: 2005 Someone Else
License: Expat

Files: doc/*
Copyright: 1999 Writer
License: permissive-doc
 Permission is granted to copy this manual.
 .
 No warranty.

Files: debian/*
License: GPL-3+ and Expat
";

    #[test]
    fn debian_short_names_become_spdx_ids_joined_with_and() {
        let d = from_dep5(BASH).unwrap();
        assert_eq!(
            d.expression,
            "GPL-3.0-or-later AND (GPL-2.0-or-later OR Artistic-1.0) AND MIT AND LicenseRef-permissive-doc"
        );
        assert_eq!(
            d.refs["LicenseRef-permissive-doc"],
            "Permission is granted to copy this manual.\n\nNo warranty."
        );
    }

    #[test]
    fn stand_alone_license_paragraphs_give_unknown_names_their_text() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
Files: *\nCopyright: x\nLicense: custom-1\n\n\
License: custom-1\n The custom terms.\n";
        let d = from_dep5(text).unwrap();
        assert_eq!(d.expression, "LicenseRef-custom-1");
        assert_eq!(d.refs["LicenseRef-custom-1"], "The custom terms.");
    }

    #[test]
    fn exceptions_and_odd_synopses_are_one_license_ref() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
Files: *\nLicense: GPL-3+ with GCC-exception-3.1\n\nFiles: b/*\nLicense: GPL-2 BSD\n";
        let d = from_dep5(text).unwrap();
        assert_eq!(
            d.expression,
            "LicenseRef-GPL-3-plus-with-GCC-exception-3.1 AND LicenseRef-GPL-2-BSD"
        );
        assert_eq!(d.refs.len(), 2);
    }

    #[test]
    fn a_single_alternative_needs_no_parentheses_and_versions_map() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
Files: *\nLicense: LGPL-2.1+ or GPL-2\n";
        assert_eq!(
            from_dep5(text).unwrap().expression,
            "LGPL-2.1-or-later OR GPL-2.0-only"
        );
        assert_eq!(spdx_for("GFDL-1.3+").as_deref(), Some("GFDL-1.3-or-later"));
        assert_eq!(spdx_for("bsd-3-clause").as_deref(), Some("BSD-3-Clause"));
        assert_eq!(spdx_for("GPL-4"), None);
        assert_eq!(spdx_for("GPL"), None);
    }

    #[test]
    fn rpm_license_fields_keep_spdx_expressions_and_name_the_rest() {
        assert_eq!(from_name("MIT").expression, "MIT");
        assert_eq!(
            from_name("GPL-2.0-or-later AND LGPL-2.1-or-later").expression,
            "GPL-2.0-or-later AND LGPL-2.1-or-later"
        );
        let old = from_name("GPLv2+");
        assert_eq!(old.expression, "LicenseRef-GPLv2-plus");
        assert_eq!(old.refs["LicenseRef-GPLv2-plus"], "GPLv2+");
        assert_eq!(
            from_name("(MIT OR Apache-2.0) AND BSD").expression,
            "LicenseRef-MIT-OR-Apache-2.0--AND-BSD"
        );
    }

    #[test]
    fn a_file_that_is_not_machine_readable_declares_nothing() {
        assert_eq!(
            from_dep5("This is Debian's prepackaged version of foo.\n\nCopyright: GPL\n"),
            None
        );
        assert_eq!(from_dep5(""), None);
    }
}
