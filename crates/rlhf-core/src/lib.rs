//! rlhf-core: the vocabulary every rlhf crate shares — ids and policy versions, chat messages,
//! error kinds with their gRPC codes, derived seeds, and the service lifecycle (cancellation, drain, signals,
//! telemetry).

pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod seed;

pub use error::{ErrorKind, status};
pub use ids::{ChatMessage, PolicyVersion, SampleId};
pub use lifecycle::{CancellationToken, TaskTracker};
pub use seed::mix;
