//! Sources: where a job's records come from.

use std::future::Future;

use crate::error::RuntimeError;
use crate::executor::Dispatch;

/// Where records come from.
///
/// A source runs until its input ends or [`Dispatch::is_stopping`] turns true. It hands
/// records to the executor partition by partition through [`Dispatch::deliver`], commits
/// what [`Dispatch::commit_points`] reports, applies [`Dispatch::flow`] (pause and
/// resume), and before it stops or gives up a partition it calls [`Dispatch::revoke`],
/// which drains that partition and returns the final offsets to commit.
pub trait Source: Send + 'static {
    /// The value type of the records it produces.
    type Item: Send + 'static;

    /// Runs the source to its end.
    ///
    /// # Errors
    /// Start-up failures (unreachable brokers, missing topics, bad configuration) and
    /// fatal errors while running.
    fn run(
        self,
        dispatch: Dispatch<Self::Item>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}
