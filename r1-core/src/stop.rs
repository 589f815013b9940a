//! Stop sequences: text that ends a generation, caught even when it spans tokens.

/// Holds back text that may be the start of a stop sequence, so a stop split across tokens is
/// caught and never emitted.
#[derive(Debug, Clone)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what can be emitted and whether a stop sequence was reached (text
    /// before it is emitted, the rest dropped).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(i) = first_stop {
            let out = self.held[..i].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_prefix_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let out: String = self.held.drain(..self.held.len() - keep).collect();
        (out, false)
    }

    /// Releases everything held (the stream ended without completing a stop sequence).
    pub(crate) fn flush(&mut self, text: &str) -> String {
        let (mut out, stopped) = self.push(text);
        if !stopped {
            out.push_str(&std::mem::take(&mut self.held));
        }
        out
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with, on a char boundary.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n))
        .find(|&n| text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequence_across_pieces() {
        let mut m = StopMatcher::new(&["</answer>".to_string(), "STOP".to_string()]);
        assert_eq!(m.push("The value is 4</"), ("The value is 4".to_string(), false));
        assert_eq!(m.push("ans"), (String::new(), false));
        assert_eq!(m.push("wer> more"), (String::new(), true));
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("ST"), (String::new(), false));
        assert_eq!(m.push("AY"), ("STAY".to_string(), false));
        assert_eq!(m.flush("ST"), "ST");
    }

    #[test]
    fn stop_prefix_respects_char_boundaries() {
        let mut m = StopMatcher::new(&["é!".to_string()]);
        assert_eq!(m.push("caf"), ("caf".to_string(), false));
        assert_eq!(m.push("é"), (String::new(), false));
        assert_eq!(m.push("é!"), ("é".to_string(), true));
    }
}
