//! Python's notion of whitespace (`str.split()`, `str.lstrip()`): Unicode White_Space plus
//! U+001C..U+001F, which Python also treats as separators.

pub fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.lstrip()`.
pub fn python_lstrip(s: &str) -> &str {
    s.trim_start_matches(is_python_whitespace)
}

/// `s.split()`.
pub fn python_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_python_whitespace).filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python() {
        assert_eq!(python_lstrip("\u{1f} \u{a0}x y"), "x y");
        assert_eq!(
            python_split(" a\u{1c}b\u{3000}c ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
