//! Errors that point at the exact place in the file, rendered like a compiler's.

use std::fmt;
use std::ops::Range;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column; `None` when the problem has no place in the file
    /// (for example the file cannot be read).
    pub location: Option<(usize, usize)>,
    pub message: String,
    /// The offending source line, for display.
    line_text: Option<String>,
    /// How many characters to underline, starting at the column.
    width: usize,
}

impl ConfigError {
    pub(crate) fn io(file: String, err: &std::io::Error) -> Self {
        Self {
            file,
            location: None,
            message: format!("cannot read the configuration file: {err}"),
            line_text: None,
            width: 0,
        }
    }

    pub(crate) fn from_toml(file: &str, source: &str, err: &toml::de::Error) -> Self {
        let message = err.message().trim_end().to_string();
        match err.span() {
            Some(span) => Self::at(file, source, Some(span), message),
            None => Self::at(file, source, None, message),
        }
    }

    pub(crate) fn at(
        file: &str,
        source: &str,
        span: Option<Range<usize>>,
        message: String,
    ) -> Self {
        let Some(span) = span else {
            return Self {
                file: file.to_string(),
                location: None,
                message,
                line_text: None,
                width: 0,
            };
        };
        let start = span.start.min(source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let line = source[..start].matches('\n').count() + 1;
        let column = source[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let width = source[start..end].chars().count().max(1);
        Self {
            file: file.to_string(),
            location: Some((line, column)),
            message,
            line_text: Some(
                source[line_start..line_end]
                    .trim_end_matches('\r')
                    .to_string(),
            ),
            width,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message)?,
            None => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let (Some((line, column)), Some(text)) = (self.location, &self.line_text) {
            let gutter = line.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{line} | {text}\n{:gutter$} | {:pad$}{}",
                "",
                "",
                "",
                "^".repeat(self.width),
                pad = column - 1
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn single(error: ConfigError) -> Self {
        Self(vec![error])
    }

    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| e.location);
        Self(errors)
    }

    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
