//! Bounded text: CRM error details and dead-letter headers are cut to a size
//! limit on a character boundary.

/// `text` cut to at most `limit` bytes (plus an ellipsis when cut), never
/// inside a UTF-8 character.
pub(crate) fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn cuts_on_a_char_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate(&"x".repeat(10), 4), "xxxx…");
        let cut = truncate(&"é".repeat(2000), 1023);
        assert!(cut.len() <= 1023 + "…".len());
        assert!(cut.ends_with('…'));
    }
}
