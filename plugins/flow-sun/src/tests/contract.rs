//! The model contract.
