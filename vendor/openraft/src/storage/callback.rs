//! Callbacks used by Storage API

use std::io;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::async_runtime::AsyncOneshotSendExt;
use crate::core::notify::Notify;
use crate::raft_state::io_state::log_io_id::LogIOId;
use crate::type_config::alias::OneshotSenderOf;
use crate::LogId;
use crate::RaftTypeConfig;
use crate::StorageIOError;

/// A oneshot callback for completion of log io operation.
pub struct LogFlushed<C>
where C: RaftTypeConfig
{
    log_io_id: LogIOId<C::NodeId>,
    tx: FlushedTo<C>,
}

/// Where a [`LogFlushed`] reports (Groundwork patch, PATCHES.md).
enum FlushedTo<C>
where C: RaftTypeConfig
{
    /// RaftCore waits for this report before its next command.
    Waiter(OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>),
    /// The leader's own append: RaftCore goes on (replicating the entries) and takes the
    /// report from its notification channel.
    Core(mpsc::UnboundedSender<Notify<C>>),
}

impl<C> LogFlushed<C>
where C: RaftTypeConfig
{
    pub(crate) fn new(
        log_io_id: LogIOId<C::NodeId>,
        tx: OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>,
    ) -> Self {
        Self {
            log_io_id,
            tx: FlushedTo::Waiter(tx),
        }
    }

    /// A callback for the leader's own append, reported to RaftCore's notification channel.
    pub(crate) fn to_core(log_io_id: LogIOId<C::NodeId>, tx: mpsc::UnboundedSender<Notify<C>>) -> Self {
        Self {
            log_io_id,
            tx: FlushedTo::Core(tx),
        }
    }

    /// Whether RaftCore goes on without waiting for this callback (Groundwork patch).
    ///
    /// `true` for the leader's own appends: the leader replicates the entries while its log
    /// flushes them, and counts itself toward the quorum only once this callback reports the
    /// flush. A storage may then return from `append` once the entries are written (readable
    /// by the log reader) and call this callback from another thread after the flush.
    /// `false` when RaftCore waits for the callback (a follower's append, whose response to
    /// the leader must follow the flush): flushing inline then saves a thread hand-off.
    pub fn flush_may_lag(&self) -> bool {
        matches!(self.tx, FlushedTo::Core(_))
    }

    /// Report log io completion event.
    ///
    /// It will be called when the log is successfully appended to the storage or an error occurs.
    pub fn log_io_completed(self, result: Result<(), io::Error>) {
        if let Err(e) = &result {
            tracing::error!("LogFlush error: {}, while flushing upto {}", e, self.log_io_id);
        }
        let result = result.map(|_| self.log_io_id);
        let sent = match self.tx {
            FlushedTo::Waiter(tx) => tx.send(result).map_err(|e| format!("{:?}", e)),
            FlushedTo::Core(tx) => tx.send(Notify::LocalIO { result }).map_err(|e| e.to_string()),
        };

        if let Err(e) = sent {
            tracing::error!("failed to send log io completion event: {}", e);
        }
    }
}

/// A oneshot callback for completion of applying logs to state machine.
pub struct LogApplied<C>
where C: RaftTypeConfig
{
    last_log_id: LogId<C::NodeId>,
    tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
}

impl<C> LogApplied<C>
where C: RaftTypeConfig
{
    #[allow(dead_code)]
    pub(crate) fn new(
        last_log_id: LogId<C::NodeId>,
        tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
    ) -> Self {
        Self { last_log_id, tx }
    }

    /// Report apply io completion event.
    ///
    /// It will be called when the log is successfully applied to the state machine or an error
    /// occurs.
    pub fn completed(self, result: Result<Vec<C::R>, StorageIOError<C::NodeId>>) {
        let res = match result {
            Ok(x) => {
                tracing::debug!("LogApplied upto {}", self.last_log_id);
                let resp = (self.last_log_id.clone(), x);
                self.tx.send(Ok(resp))
            }
            Err(e) => {
                tracing::error!("LogApplied error: {}, while applying upto {}", e, self.last_log_id);
                self.tx.send(Err(e))
            }
        };

        if let Err(_e) = res {
            tracing::error!("failed to send apply complete event, last_log_id: {}", self.last_log_id);
        }
    }
}
