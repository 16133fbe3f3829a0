//! Text from users (paths, titles, labels) written into Markdown (model cards, reports) and
//! into the Python of a card's loading example, so that it reads as the text it is: a folder
//! named with a newline, backticks or `|` cannot end a code span, open a heading, split a table
//! row or end a Python string in the card a3ft writes.

/// A control character as visible text: `\n`, `\t`, `\r`, else `\xNN` (`\u{NNNN}` above 0xff).
fn escaped_control(c: char) -> String {
    match c {
        '\n' => "\\n".into(),
        '\t' => "\\t".into(),
        '\r' => "\\r".into(),
        c if (c as u32) <= 0xff => format!("\\x{:02x}", c as u32),
        c => format!("\\u{{{:04x}}}", c as u32),
    }
}

/// `s` on one line, its control characters (line ends, escapes, bidi-free C0/C1) made visible.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                escaped_control(c)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `s` as an inline code span: on one line, fenced by more backticks than the longest run of
/// them in `s` (CommonMark's rule), padded with spaces where `s` starts or ends with one.
pub fn code(s: &str) -> String {
    let s = one_line(s);
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') || longest > 0 {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// `s` as plain Markdown text inside a line (after `| `, `**`, `# `): one line, every character
/// Markdown acts on there backslash-escaped (`|` included, so it also stays inside a table
/// cell); `-`, `+`, `.` and `#` act only at a line's start, and stay as they are.
pub fn text(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_control() {
            // `\n` stays as typed: a backslash before a letter is no escape in Markdown.
            out.push_str(&escaped_control(c));
            continue;
        }
        if "\\`*_{}[]<>|~&".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A Markdown table cell holding `cell` (already Markdown): a `|` splits cells in GFM, even in a
/// code span, unless escaped.
pub fn cell(cell: &str) -> String {
    let mut out = String::new();
    let mut prev = ' ';
    for c in cell.chars() {
        if c == '|' && prev != '\\' {
            out.push('\\');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// `s` as a Python string literal (double-quoted; backslash, quote and every control character
/// escaped), for the code of a card's loading example.
pub fn python_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => match c {
                '\n' | '\t' | '\r' => out.push_str(&escaped_control(c)),
                c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push_str(&format!("\\u{:04x}", c as u32)),
            },
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as one POSIX shell word for a command shown to the user: as is when it holds only
/// characters no shell acts on, else single-quoted (a `'` as `'\''`).
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_stays_text() {
        assert_eq!(code("runs/a"), "`runs/a`");
        assert_eq!(code("a`b"), "`` a`b ``");
        assert_eq!(code("x```y"), "```` x```y ````");
        assert_eq!(code("a\n# b"), "`a\\n# b`");
        assert_eq!(one_line("a\u{1b}[31mb\u{85}"), "a\\x1b[31mb\\x85");
        assert_eq!(text("*a-1* | [b](c)\n"), "\\*a-1\\* \\| \\[b\\](c)\\n");
        assert_eq!(cell("`a|b` | c\\|d"), "`a\\|b` \\| c\\|d");
        assert_eq!(shell_word("/a/b-1.pt"), "/a/b-1.pt");
        assert_eq!(shell_word("my run's $x"), "'my run'\\''s $x'");
        assert_eq!(python_str("a\"b\\c\nd\u{7f}"), "\"a\\\"b\\\\c\\nd\\x7f\"");
    }
}
