//! A small, strict reader for the short XML documents of ILDG/SciDAC records (ildg-format,
//! scidac-private-file-xml, scidac-checksum, …), and text escaping for writing them.
//!
//! It reads elements, attributes (skipped), text with the five predefined entities and
//! numeric character references, comments, processing instructions and a DOCTYPE in the
//! prolog. Element names lose their namespace prefix (`ildg:lx` is `lx`). Malformed documents
//! (unclosed or mismatched tags, text outside the root, unknown entities, nesting deeper than
//! 64) are errors; trailing NUL bytes (written by some C codes) are ignored.

/// An element: its local name, its text (the concatenated character data directly inside it)
/// and its child elements in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The trimmed text of the first child called `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

const MAX_DEPTH: usize = 64;

/// Parses a document (UTF-8 bytes) into its root element; the error describes the first
/// problem and where it is (byte offset).
pub fn parse(bytes: &[u8]) -> Result<Element, String> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let s = std::str::from_utf8(&bytes[..end]).map_err(|e| format!("not UTF-8 text ({e})"))?;
    let mut p = Parser { s, at: 0 };
    p.misc()?;
    if !p.rest().starts_with('<') {
        return Err(p.err("expected the root element"));
    }
    let root = p.element(0)?;
    p.misc()?;
    if p.at < s.len() {
        return Err(p.err("content after the root element"));
    }
    Ok(root)
}

/// Escapes `&`, `<`, `>`, `"` and `'` for use in element text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn err(&self, what: &str) -> String {
        format!("malformed XML at byte {}: {what}", self.at)
    }

    /// Skips to just after `end`, or errors.
    fn skip_past(&mut self, end: &str, what: &str) -> Result<(), String> {
        match self.rest().find(end) {
            Some(i) => {
                self.at += i + end.len();
                Ok(())
            }
            None => Err(self.err(&format!("unterminated {what}"))),
        }
    }

    /// Whitespace, comments, processing instructions and a DOCTYPE (outside the root).
    fn misc(&mut self) -> Result<(), String> {
        loop {
            let r = self.rest();
            let trimmed = r.trim_start();
            self.at += r.len() - trimmed.len();
            if trimmed.starts_with("<?") {
                self.skip_past("?>", "processing instruction")?;
            } else if trimmed.starts_with("<!--") {
                self.skip_past("-->", "comment")?;
            } else if trimmed.starts_with("<!DOCTYPE") {
                self.skip_past(">", "DOCTYPE")?;
            } else {
                return Ok(());
            }
        }
    }

    /// A name: up to whitespace, `/`, `>` or `=`.
    fn name(&mut self) -> Result<&'a str, String> {
        let r = self.rest();
        let n = r
            .find(|c: char| c.is_whitespace() || c == '/' || c == '>' || c == '=')
            .unwrap_or(r.len());
        if n == 0 {
            return Err(self.err("expected a name"));
        }
        self.at += n;
        Ok(&r[..n])
    }

    /// One element starting at `<`.
    fn element(&mut self, depth: usize) -> Result<Element, String> {
        if depth >= MAX_DEPTH {
            return Err(self.err("elements nested too deeply"));
        }
        self.at += 1; // '<'
        let qname = self.name()?;
        let name = local(qname).to_string();
        // attributes
        loop {
            let r = self.rest();
            let t = r.trim_start();
            self.at += r.len() - t.len();
            if t.starts_with("/>") {
                self.at += 2;
                return Ok(Element {
                    name,
                    text: String::new(),
                    children: Vec::new(),
                });
            }
            if t.starts_with('>') {
                self.at += 1;
                break;
            }
            if t.is_empty() {
                return Err(self.err(&format!("unterminated start tag <{qname}>")));
            }
            self.attribute()?;
        }
        let mut text = String::new();
        let mut children = Vec::new();
        loop {
            let r = self.rest();
            let lt = r
                .find('<')
                .ok_or_else(|| self.err(&format!("element <{qname}> is not closed")))?;
            text.push_str(&unescape(&r[..lt]).map_err(|e| self.err(&e))?);
            self.at += lt;
            let r = self.rest();
            if r.starts_with("</") {
                self.at += 2;
                let close = self.name()?;
                if close != qname {
                    return Err(
                        self.err(&format!("closing tag </{close}> does not match <{qname}>"))
                    );
                }
                let r = self.rest();
                let t = r.trim_start();
                if !t.starts_with('>') {
                    return Err(self.err(&format!("unterminated closing tag </{close}>")));
                }
                self.at += r.len() - t.len() + 1;
                return Ok(Element {
                    name,
                    text,
                    children,
                });
            } else if r.starts_with("<!--") {
                self.skip_past("-->", "comment")?;
            } else if let Some(body) = r.strip_prefix("<![CDATA[") {
                let e = body
                    .find("]]>")
                    .ok_or_else(|| self.err("unterminated CDATA section"))?;
                text.push_str(&body[..e]);
                self.at += 9 + e + 3;
            } else if r.starts_with("<?") {
                self.skip_past("?>", "processing instruction")?;
            } else {
                children.push(self.element(depth + 1)?);
            }
        }
    }

    /// `name = "value"` or `name = 'value'` (the value is not kept).
    fn attribute(&mut self) -> Result<(), String> {
        self.name()?;
        let r = self.rest();
        let t = r.trim_start();
        if !t.starts_with('=') {
            return Err(self.err("expected '=' after an attribute name"));
        }
        self.at += r.len() - t.len() + 1;
        let r = self.rest();
        let t = r.trim_start();
        self.at += r.len() - t.len();
        let quote = match t.chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.err("expected a quoted attribute value")),
        };
        let close = t[1..]
            .find(quote)
            .ok_or_else(|| self.err("unterminated attribute value"))?;
        if t[1..1 + close].contains('<') {
            return Err(self.err("'<' in an attribute value"));
        }
        self.at += close + 2;
        Ok(())
    }
}

/// The local part of a qualified name.
fn local(qname: &str) -> &str {
    qname.rsplit(':').next().unwrap_or(qname)
}

/// Replaces the predefined entities and numeric character references.
fn unescape(s: &str) -> Result<String, String> {
    if !s.contains('&') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let semi = after
            .find(';')
            .filter(|&j| j <= 10)
            .ok_or("'&' without an entity")?;
        let ent = &after[..semi];
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code =
                    if let Some(h) = ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X")) {
                        u32::from_str_radix(h, 16).ok()
                    } else if let Some(d) = ent.strip_prefix('#') {
                        d.parse::<u32>().ok()
                    } else {
                        None
                    };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{ent};"))?
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
