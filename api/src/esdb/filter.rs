//! The server-side filter of `$all` reads and subscriptions: on the stream name or the
//! event type, by prefixes or by a regular expression.

use eventstore::RecordedEvent;
use regex::{Regex, RegexBuilder};

use super::proto::streams::read_req::options::filter_options::{Expression, Filter, Window};
use super::proto::streams::read_req::options::FilterOptions;

/// Most prefixes one filter may list.
pub const FILTER_MAX_PREFIXES: usize = 1_000;
/// Longest regular expression accepted, in bytes.
pub const FILTER_REGEX_MAX_BYTES: usize = 4_096;
/// Largest compiled regular expression, in bytes (the regex crate's size limit).
const FILTER_REGEX_COMPILED_MAX_BYTES: usize = 1 << 20;
/// The checkpoint window when the client leaves it to the server ("count").
pub const DEFAULT_CHECKPOINT_WINDOW: u64 = 32;
/// The largest number of events between two checkpoints.
pub const CHECKPOINT_INTERVAL_MAX: u64 = 1_000_000;

#[derive(Debug, Clone)]
enum Target {
    StreamName,
    EventType,
}

#[derive(Debug, Clone)]
enum Matcher {
    Prefixes(Vec<String>),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct EventFilter {
    target: Target,
    matcher: Matcher,
    checkpoint_interval: u64,
}

impl EventFilter {
    pub fn parse(options: &FilterOptions) -> Result<Self, String> {
        let (target, expression) = match &options.filter {
            Some(Filter::StreamIdentifier(e)) => (Target::StreamName, e),
            Some(Filter::EventType(e)) => (Target::EventType, e),
            None => return Err("a filter names a stream or an event type expression".into()),
        };
        let matcher = Self::matcher(expression)?;
        let window = match options.window {
            Some(Window::Max(max)) if max > 0 => u64::from(max),
            Some(Window::Max(_)) => return Err("a filter's window must be at least 1".into()),
            Some(Window::Count(())) | None => DEFAULT_CHECKPOINT_WINDOW,
        };
        let multiplier = u64::from(options.checkpoint_interval_multiplier.max(1));
        Ok(EventFilter {
            target,
            matcher,
            checkpoint_interval: window
                .saturating_mul(multiplier)
                .min(CHECKPOINT_INTERVAL_MAX),
        })
    }

    fn matcher(expression: &Expression) -> Result<Matcher, String> {
        if !expression.prefix.is_empty() {
            if expression.prefix.len() > FILTER_MAX_PREFIXES {
                return Err(format!("at most {FILTER_MAX_PREFIXES} prefixes"));
            }
            return Ok(Matcher::Prefixes(expression.prefix.clone()));
        }
        if expression.regex.is_empty() {
            return Err("a filter needs prefixes or a regular expression".into());
        }
        if expression.regex.len() > FILTER_REGEX_MAX_BYTES {
            return Err(format!(
                "a filter's regular expression is at most {FILTER_REGEX_MAX_BYTES} bytes"
            ));
        }
        RegexBuilder::new(&expression.regex)
            .size_limit(FILTER_REGEX_COMPILED_MAX_BYTES)
            .build()
            .map(Matcher::Regex)
            .map_err(|e| format!("bad regular expression: {e}"))
    }

    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let subject = match self.target {
            Target::StreamName => event.stream_id.as_str(),
            Target::EventType => event.event_type.as_str(),
        };
        match &self.matcher {
            Matcher::Prefixes(prefixes) => prefixes.iter().any(|p| subject.starts_with(p.as_str())),
            Matcher::Regex(regex) => regex.is_match(subject),
        }
    }

    /// Events scanned between two checkpoint replies: the window times the multiplier.
    pub fn checkpoint_interval(&self) -> u64 {
        self.checkpoint_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(filter: Filter) -> FilterOptions {
        FilterOptions {
            filter: Some(filter),
            window: Some(Window::Max(10)),
            checkpoint_interval_multiplier: 3,
        }
    }

    #[test]
    fn prefixes_and_regexes_select_by_stream_or_type() {
        let by_prefix = EventFilter::parse(&options(Filter::StreamIdentifier(Expression {
            regex: String::new(),
            prefix: vec!["acme-".into(), "beta".into()],
        })))
        .unwrap();
        assert_eq!(by_prefix.checkpoint_interval(), 30);
        let by_regex = EventFilter::parse(&options(Filter::EventType(Expression {
            regex: "^Order(Placed|Paid)$".into(),
            prefix: vec![],
        })))
        .unwrap();
        assert!(matches!(by_prefix.matcher, Matcher::Prefixes(_)));
        assert!(matches!(by_regex.matcher, Matcher::Regex(_)));
    }

    #[test]
    fn bad_filters_are_refused() {
        for expression in [
            Expression {
                regex: String::new(),
                prefix: vec![],
            },
            Expression {
                regex: "(".into(),
                prefix: vec![],
            },
        ] {
            assert!(EventFilter::parse(&options(Filter::EventType(expression))).is_err());
        }
    }
}
