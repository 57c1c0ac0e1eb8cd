use std::fmt;

/// Errors from invalid input. Each message names the argument, what was expected and what came.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// An argument has a value outside its domain (shape, range, NaN, ...).
    InvalidArgument { arg: &'static str, message: String },
    /// The requested output would exceed a documented size bound.
    TooLarge { message: String },
}

impl Error {
    pub(crate) fn arg(arg: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument { arg, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { arg, message } => write!(f, "{arg}: {message}"),
            Error::TooLarge { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}
