//! The executor: what runs a built job.
//!
//! - `state`: the job's shared state (name, stop signal, first error) and its live
//!   counters;
//! - `partition`: one assigned partition's tracker, counters and flow-control flags,
//!   which acks settle through `sink::Settle`;
//! - `dispatch`: the [`Dispatch`] handle a source feeds, with a lane (a partition state
//!   and a task) per partition;
//! - `task`: the partition task that runs records through the chain into the sink, and
//!   the hook that sends records failing at the sink to the dead-letter queue.
//!
//! Imports run one way: `task` → `dispatch` → `partition` → `state`.

mod collect;
mod dispatch;
mod partition;
mod state;
mod task;

pub use dispatch::{Dispatch, Flow};
pub use state::{JobReport, JobStats, Progress};

pub(crate) use state::JobShared;
pub(crate) use task::Chain;
