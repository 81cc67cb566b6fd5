//! Keap sandbox.
