//! `relay-local`: keap-relay on one machine. The Keap sandbox, a secret store and the four
//! functions' handlers (through an API Gateway stand-in, a schedule timer and an in-memory
//! queue), on embedded defaults that the functions' own environment variables override.

pub mod backfill;
pub mod callback_event;
pub mod cli;
pub mod defaults;
pub mod events_queue;
pub mod gateway;
pub mod helpers;
pub mod progress;
pub mod queue;
pub mod run;
pub mod secrets;
pub mod site;
pub mod stack;
pub mod walkthrough;
