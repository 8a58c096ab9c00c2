//! containerd's list filters, for the fields a snapshot has.
//!
//! A request carries several filters; a snapshot matches if any matches. A filter is selectors
//! joined by `,`, all of which must match. A selector is a field path (`name`, `parent`, `kind`,
//! `labels.<key>`; parts may be double-quoted: `labels."containerd.io/gc.root"`), alone (the
//! field is present) or followed by `==`, `!=` or `~=` (a regular expression) and a value, bare
//! or double-quoted.

use crate::model::Info;
use crate::{Error, Result};

#[derive(Debug)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Matches(regex::Regex),
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

const MAX_FILTER_LEN: usize = 8192;

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Self> {
        let mut out = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            if f.len() > MAX_FILTER_LEN {
                return Err(Error::InvalidArgument(format!(
                    "filter longer than {MAX_FILTER_LEN} bytes"
                )));
            }
            out.push(
                Parser {
                    s: f.as_bytes(),
                    pos: 0,
                    text: f,
                }
                .filter()?,
            );
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty() || self.0.iter().any(|all| all.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let (value, present) = field(info, &self.path);
        match &self.op {
            Op::Present => present,
            Op::Eq(v) => present && value == *v,
            Op::Ne(v) => value != *v,
            Op::Matches(re) => present && re.is_match(&value),
        }
    }
}

fn field(info: &Info, path: &[String]) -> (String, bool) {
    match path.first().map(String::as_str) {
        // As containerd's own adaptor: name and parent are always present (`parent==""` matches
        // snapshots without a parent; containerd's metadata layer asks exactly that).
        Some("name") if path.len() == 1 => (info.name.clone(), true),
        Some("parent") if path.len() == 1 => (info.parent.clone(), true),
        Some("kind") if path.len() == 1 => (info.kind.as_str().to_string(), true),
        Some("labels") if path.len() > 1 => match info.labels.get(&path[1..].join(".")) {
            Some(v) => (v.clone(), true),
            None => (String::new(), false),
        },
        _ => (String::new(), false),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::InvalidArgument(format!("filter {:?} at {}: {what}", self.text, self.pos))
    }

    fn skip_space(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn filter(&mut self) -> Result<Vec<Selector>> {
        let mut all = vec![self.selector()?];
        loop {
            self.skip_space();
            match self.peek() {
                None => return Ok(all),
                Some(b',') => {
                    self.pos += 1;
                    all.push(self.selector()?);
                }
                Some(_) => return Err(self.err("expected `,` or the end")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut path = vec![self.field()?];
        while self.peek() == Some(b'.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_space();
        let rest = &self.s[self.pos..];
        let op = if rest.starts_with(b"==") || rest.starts_with(b"!=") || rest.starts_with(b"~=") {
            let kind = rest[0];
            self.pos += 2;
            let value = self.value()?;
            match kind {
                b'=' => Op::Eq(value),
                b'!' => Op::Ne(value),
                _ => Op::Matches(
                    regex::Regex::new(&value)
                        .map_err(|e| self.err(&format!("bad regular expression: {e}")))?,
                ),
            }
        } else {
            Op::Present
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String> {
        self.skip_space();
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected a field name"));
        }
        Ok(self.text[start..self.pos].to_string())
    }

    fn value(&mut self) -> Result<String> {
        self.skip_space();
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.pos;
        while self.peek().is_some_and(|b| b != b',') {
            self.pos += 1;
        }
        Ok(self.text[start..self.pos].trim_end().to_string())
    }

    fn quoted(&mut self) -> Result<String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quoted string")),
                Some(b'"') => {
                    self.pos += 1;
                    return String::from_utf8(out).map_err(|_| self.err("quoted string is not UTF-8"));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Labels};
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Labels>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn m(filters: &[&str], i: &Info) -> bool {
        Filters::parse(&filters.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .matches(i)
    }

    #[test]
    fn containerd_filter_forms() {
        let a = info(
            "a-wl",
            "p-wl",
            Kind::Active,
            &[("l", "2"), ("containerd.io/gc.root", "x")],
        );
        assert!(m(&[], &a));
        assert!(m(&["labels.\"containerd.io/gc.root\"==x"], &a));
        assert!(m(&["kind==active,labels.l==2"], &a));
        assert!(!m(&["kind==view,labels.l==2"], &a));
        assert!(m(&["name==p", "name==a-wl"], &a));
        assert!(m(&["name==a-wl,labels.l"], &a));
        assert!(!m(&["labels.missing"], &a));
        assert!(m(&["parent!=\"\""], &a));
        assert!(!m(&["parent!=\"\""], &info("b", "", Kind::Committed, &[])));
        assert!(m(
            &["labels.l==2,parent==\"\""],
            &info("b", "", Kind::Committed, &[("l", "2")])
        ));
        assert!(!m(&["parent==\"\""], &a));
        assert!(m(&["name~=^a-"], &a));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in ["==x", "name==\"open", "name~=(", "name x"] {
            assert!(Filters::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
