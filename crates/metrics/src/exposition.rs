//! A strict reader of the text exposition the endpoint serves (OpenMetrics
//! text, as prometheus-client writes it), for tests: every line must be a
//! descriptor, a sample of a declared family, or the final `# EOF`.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The samples of `text`, or the first line that breaks the grammar (1-based) and why.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if eof {
            return Err(fail("text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
        } else if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if !is_metric_name(name) {
                return Err(fail("bad metric name"));
            }
            match (keyword, parts.next()) {
                ("TYPE", Some(t)) if ["counter", "gauge", "histogram", "summary", "info", "unknown"].contains(&t) => {
                    families.push((name.to_owned(), t.to_owned()))
                }
                ("HELP" | "UNIT", _) => {}
                _ => return Err(fail("bad descriptor")),
            }
        } else {
            let sample = sample(line).map_err(|why| fail(&why))?;
            let declared = families.iter().any(|(f, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| sample.name.strip_suffix(s) == Some(f.as_str()))
            });
            if !declared {
                return Err(fail("a sample of no declared family"));
            }
            samples.push(sample);
        }
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            let eq = inner.find('=').ok_or("a label without =")?;
            let key = &inner[..eq];
            if !is_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let (value, after) = quoted(&inner[eq + 1..])?;
            labels.push((key.to_owned(), value));
            if let Some(a) = after.strip_prefix(',') {
                inner = a;
            } else if let Some(a) = after.strip_prefix('}') {
                rest = a;
                break;
            } else {
                return Err("labels not closed".into());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = value.split(' ').next().unwrap_or_default();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// A quoted label value and what follows it.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let body = s.strip_prefix('"').ok_or("a label value not quoted")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, c @ ('\\' | '"'))) => out.push(c),
                _ => return Err("a bad escape in a label value".into()),
            },
            c => out.push(c),
        }
    }
    Err("a label value not closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_text_parses_and_bad_lines_are_named() {
        let good = "# HELP a_total x\n# TYPE a counter\na_total{k=\"v\\\"\"} 3\n# TYPE b gauge\nb 1.5\n# EOF\n";
        let s = parse(good).expect("parses");
        assert_eq!(s[0].label("k"), Some("v\""));
        assert_eq!((s[1].name.as_str(), s[1].value), ("b", 1.5));
        for bad in [
            "# TYPE a counter\na_total 1\n",             // no EOF
            "b 1\n# EOF\n",                              // undeclared
            "# TYPE a counter\na_total{k=v} 1\n# EOF\n", // unquoted
            "# TYPE a counter\na_total one\n# EOF\n",    // bad value
            "# TYPE a countr\n# EOF\n",                  // bad type
            "# TYPE a counter\n# EOF\na_total 1\n",      // after EOF
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
