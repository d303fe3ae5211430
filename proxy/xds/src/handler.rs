//! The seam between the client and what applies its resources: the client converts, a
//! [`Handler`] applies them (the configuration store, the binary's listener manager) or
//! refuses some with [`Rejected`]. Its own module so that the client and the store depend
//! on it rather than on each other.

/// Applies converted resources of one type. Returning `Err` refuses the listed resources
/// (they are NACKed); every other update and removal must have been applied.
pub trait Handler<T>: Send {
    fn apply(
        &mut self,
        updates: Vec<(String, T)>,
        removed: Vec<String>,
    ) -> Result<(), Vec<Rejected>>;
}

/// A resource left out of an update, and why; one line of a NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub error: String,
}

impl Rejected {
    pub fn new(name: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            error: error.into(),
        }
    }
}
