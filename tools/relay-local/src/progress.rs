//! Progress lines on stdout, one per event as it happens (Rust's stdout is line-buffered, so
//! each line reaches a pipe or a terminal as soon as it is printed). Logs go to stderr.

/// A section heading.
pub fn section(title: &str) {
    println!();
    println!("== {title}");
}

/// Something done and checked.
pub fn ok(message: &str) {
    println!("✓ {message}");
}

/// A request or an action about to happen, and what it answered.
pub fn action(message: &str) {
    println!("→ {message}");
}

/// Supporting detail.
pub fn detail(message: &str) {
    println!("  {message}");
}

/// Something that went wrong.
pub fn failed(message: &str) {
    println!("✗ {message}");
}

/// Something that happened on its own (a timer).
pub fn background(message: &str) {
    println!("↻ {message}");
}

/// Indents every line of a block (JSON bodies, pages) under the line before it.
pub fn block(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

/// A response body on one line, shortened for a progress line.
pub fn one_line(body: &str, max_chars: usize) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max_chars {
        flat
    } else {
        let mut cut: String = flat.chars().take(max_chars.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_flattened_and_shortened() {
        assert_eq!(one_line("{\n  \"a\": 1\n}", 80), "{ \"a\": 1 }");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
