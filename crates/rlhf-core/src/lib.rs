//! rlhf-core: the vocabulary every rlhf crate shares — ids and policy versions, chat messages,
//! error kinds with their gRPC codes, and the service lifecycle (cancellation, drain, signals,
//! telemetry).

pub mod error;
pub mod ids;
pub mod lifecycle;

pub use error::{ErrorKind, status};
pub use ids::{ChatMessage, PolicyVersion, SampleId};
pub use lifecycle::{CancellationToken, TaskTracker};
