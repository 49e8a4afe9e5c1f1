//! What can go wrong when a catalogue answers, by kind, so that the CLI and the server tell a
//! caller's mistake from the shop's trouble in one place each (an exit status, an HTTP status).
//!
//! Deep in the pipeline errors are `anyhow` chains with context; a stage that knows the kind
//! raises one of these inside the chain, and the front door (`shop`) hands callers an
//! [`Error`] whose kind was found in the chain and whose message is the whole chain.

/// What a front-door call returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a photo cannot be used, for callers that answer each differently (HTTP 415, 413, 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageProblem {
    /// Empty, or not an image format lookalike reads.
    NotAnImage,
    /// Larger (in pixels or bytes) than lookalike decodes.
    TooLarge,
    /// An image format lookalike reads, but broken or unreadable.
    Undecodable,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A product (or another named thing) the catalogue does not hold.
    #[error("{0}")]
    NotFound(String),
    /// A change that contradicts what the catalogue holds (creating a product that exists).
    #[error("{0}")]
    Conflict(String),
    /// The question itself is wrong: a number out of range, an empty query, text too long.
    #[error("{0}")]
    InvalidInput(String),
    /// A photo that cannot be used.
    #[error("{message}")]
    Image { problem: ImageProblem, message: String },
    /// A model, head or precision that does not fit the catalogue's vectors.
    #[error("{0}")]
    WrongModel(String),
    /// More work than lookalike takes on at once: try again shortly.
    #[error("{0}")]
    Overloaded(String),
    /// The database cannot be reached, opened or is busy.
    #[error("{0}")]
    StoreUnavailable(String),
    /// Anything else: a broken file, a bug; the message says what.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// A product id the catalogue does not hold.
    pub fn no_product(id: &str) -> Self {
        Self::NotFound(format!("no product with id {id:?} in the catalogue"))
    }

    /// The same kind with another message (the whole chain an error was found in).
    fn with_message(&self, message: String) -> Self {
        match self {
            Self::NotFound(_) => Self::NotFound(message),
            Self::Conflict(_) => Self::Conflict(message),
            Self::InvalidInput(_) => Self::InvalidInput(message),
            Self::Image { problem, .. } => Self::Image {
                problem: *problem,
                message,
            },
            Self::WrongModel(_) => Self::WrongModel(message),
            Self::Overloaded(_) => Self::Overloaded(message),
            Self::StoreUnavailable(_) => Self::StoreUnavailable(message),
            Self::Internal(_) => Self::Internal(anyhow::Error::msg(message)),
        }
    }

    /// The kind `kind_of` finds in `err`'s chain (an [`Error`] raised inside it first), with the
    /// whole chain as the message; else [`Error::Internal`].
    pub fn from_chain(
        err: anyhow::Error,
        kind_of: impl Fn(&(dyn std::error::Error + 'static)) -> Option<Self>,
    ) -> Self {
        let message = format!("{err:#}");
        let found = err.chain().find_map(|cause| match cause.downcast_ref::<Self>() {
            Some(typed) => Some(typed.with_message(String::new())),
            None => kind_of(cause),
        });
        match found {
            Some(Self::Internal(_)) | None => Self::Internal(err),
            Some(kind) => kind.with_message(message),
        }
    }
}
