//! The `signup-retry` function (SQS); see [`handler`].

pub mod handler;
