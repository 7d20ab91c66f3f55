//! Configuration errors.
