//! Which measurements an output takes: its `include` and `exclude` lists, applied to a batch's
//! line protocol as the forwarder sends it.
//!
//! Why it exists: with several outputs over one buffer, some data belongs in one place only
//! (camera events to the IOC store, not to the national platform). The buffer holds every line
//! once; each output's forwarder drops what is not for it from the batch it sends, and a batch
//! with nothing for it is acknowledged without a request. An output without lists sends the
//! buffer's compressed bytes as they are (no cost).
//!
//! A pattern is a measurement name, or a prefix ending in `*` (`camera_*`). `include` (when not
//! empty) says what is taken; `exclude` then removes from that.

/// A compiled `include`/`exclude` pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeasurementFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() || s == "*" {
            return Err(format!(
                "{s:?} is not a measurement pattern (a name, or a prefix ending in *; leave the list out to take everything)"
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(format!("{s:?} contains a control character"));
        }
        match s.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(format!(
                "{s:?}: * may only end a pattern (a prefix), not stand inside it"
            )),
            Some(prefix) => Ok(Pattern::Prefix(prefix.to_owned())),
            None if s.contains('*') => Err(format!(
                "{s:?}: * may only end a pattern (a prefix), not stand inside it"
            )),
            None => Ok(Pattern::Exact(s.to_owned())),
        }
    }

    fn matches(&self, measurement: &[u8]) -> bool {
        match self {
            Pattern::Exact(name) => name.as_bytes() == measurement,
            Pattern::Prefix(prefix) => measurement.starts_with(prefix.as_bytes()),
        }
    }
}

impl MeasurementFilter {
    /// Compiles the lists; the error names the first bad pattern.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        let compile = |list: &[String]| -> Result<Vec<Pattern>, String> {
            list.iter().map(|s| Pattern::parse(s)).collect()
        };
        Ok(MeasurementFilter {
            include: compile(include)?,
            exclude: compile(exclude)?,
        })
    }

    /// Checks one list as the config does.
    pub fn check_patterns(list: &[String]) -> Result<(), String> {
        list.iter().try_for_each(|s| Pattern::parse(s).map(|_| ()))
    }

    /// Whether it takes every line (no lists): batches are sent as the buffer holds them.
    pub fn takes_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether a line of `measurement` (unescaped) goes to this output.
    pub fn takes(&self, measurement: &[u8]) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(measurement)))
            && !self.exclude.iter().any(|p| p.matches(measurement))
    }

    /// Appends the lines of `lp` this output takes to `out` (each ending in `\n`); returns how
    /// many. A line whose measurement cannot be read is kept (the store judges it, and the
    /// dead-letter file keeps it if refused): a filter never loses what it does not understand.
    pub fn filter(&self, lp: &[u8], out: &mut Vec<u8>) -> u32 {
        let mut kept = 0;
        let mut name = Vec::new();
        for line in lp.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let take = match measurement(line, &mut name) {
                Some(m) => self.takes(m),
                None => true,
            };
            if take {
                out.extend_from_slice(line);
                out.push(b'\n');
                kept += 1;
            }
        }
        kept
    }
}

/// The measurement of a line protocol line, unescaped into `buf`: up to the first comma or
/// space not escaped by a backslash. `None` for a line without one.
fn measurement<'b>(line: &[u8], buf: &'b mut Vec<u8>) -> Option<&'b [u8]> {
    buf.clear();
    let mut escaped = false;
    for &b in line {
        if escaped {
            buf.push(b);
            escaped = false;
            continue;
        }
        match b {
            b'\\' => escaped = true,
            b',' | b' ' => return (!buf.is_empty()).then_some(buf.as_slice()),
            _ => buf.push(b),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(include: &[&str], exclude: &[&str]) -> MeasurementFilter {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        MeasurementFilter::new(&v(include), &v(exclude)).unwrap()
    }

    fn run(filter: &MeasurementFilter, lp: &str) -> (u32, String) {
        let mut out = Vec::new();
        let n = filter.filter(lp.as_bytes(), &mut out);
        (n, String::from_utf8(out).unwrap())
    }

    const LP: &str = "env,gateway=g pm25=1 1\ncamera_event,cam=3 plate=\"X\" 2\ncamera_stats n=4i 3\nweird\\ name,t=a v=1 4\nno\\,comma v=1 5\n";

    #[test]
    fn no_lists_take_everything_unchanged() {
        let all = f(&[], &[]);
        assert!(all.takes_all());
        assert_eq!(run(&all, LP), (5, LP.to_string()));
    }

    #[test]
    fn include_exact_and_prefix_then_exclude() {
        let (n, out) = run(&f(&["camera_*"], &[]), LP);
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "camera_event,cam=3 plate=\"X\" 2\ncamera_stats n=4i 3\n"
        );
        let (n, out) = run(&f(&["camera_*"], &["camera_stats"]), LP);
        assert_eq!((n, out.as_str()), (1, "camera_event,cam=3 plate=\"X\" 2\n"));
        let (n, out) = run(&f(&[], &["camera_*"]), LP);
        assert_eq!(n, 3);
        assert!(!out.contains("camera"));
    }

    #[test]
    fn escaped_measurements_are_compared_unescaped() {
        let (n, out) = run(&f(&["weird name", "no,comma"], &[]), LP);
        assert_eq!(n, 2, "{out}");
        assert!(out.starts_with("weird\\ name,"));
        assert!(out.ends_with("no\\,comma v=1 5\n"));
    }

    #[test]
    fn a_line_without_a_measurement_is_kept_and_empty_lines_dropped() {
        let (n, out) = run(
            &f(&["env"], &[]),
            "\n\ngarbage-without-space\nenv v=1 1\n\n",
        );
        assert_eq!((n, out.as_str()), (2, "garbage-without-space\nenv v=1 1\n"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_pattern() {
        for bad in ["", "*", "cam*era", "*x", "a\u{1}"] {
            let e = MeasurementFilter::check_patterns(&[bad.to_string()]).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
        assert!(MeasurementFilter::check_patterns(&["a".into(), "b*".into()]).is_ok());
    }
}
