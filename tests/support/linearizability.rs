//! A linearizability checker for histories of one register (read, write, compare-and-set),
//! in the style of Wing & Gong with Lowe's memoisation (the algorithm Knossos and Porcupine
//! use): search for an order of the operations that respects real time (an operation that
//! returned before another was invoked comes first) and the register's sequential semantics.
//!
//! Operations whose outcome the client does not know (a timeout after sending) never return:
//! they may take effect at any point after their invocation, or never. Values written are
//! unique, so an unknown write whose value nobody observed can be left out without loss; that
//! keeps the search small. The price: a failed compare-and-set is not checked (it only says
//! that some write, perhaps such an unknown one, came between its read and its write), while
//! every read and every successful compare-and-set is.

use std::collections::HashSet;

/// What a client did to the register and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read the value (`None`: the register did not exist / was never written).
    Read(Option<u64>),
    Write(u64),
    /// Compare-and-set `from` → `to`; `ok` is whether it succeeded (unknown ops: either).
    Cas {
        from: u64,
        to: u64,
        ok: bool,
    },
}

/// One operation with its invocation and return times (any monotonic unit).
#[derive(Clone, Debug)]
pub struct Event {
    pub op: Op,
    pub invoke: u128,
    /// `None`: the outcome is unknown (may have happened or not).
    pub ret: Option<u128>,
}

/// Applies `op` to `state`; `Some(new state)` when the operation's observed result is
/// consistent with it. Unknown-outcome CAS are tried both ways by the caller.
fn step(state: Option<u64>, op: &Op) -> Option<Option<u64>> {
    match op {
        Op::Read(v) => (*v == state).then_some(state),
        Op::Write(v) => Some(Some(*v)),
        Op::Cas { from, to, ok: true } => (state == Some(*from)).then_some(Some(*to)),
        Op::Cas { ok: false, .. } => Some(state),
    }
}

/// Whether `history` (of one register, initially absent) is linearizable.
pub fn check(history: &[Event]) -> Result<(), String> {
    check_from(None, history)
}

/// Whether `history` of a register that starts at `initial` is linearizable. On failure the
/// message says how many completed operations could be ordered at most.
pub fn check_from(initial: Option<u64>, history: &[Event]) -> Result<(), String> {
    // Unknown writes of values no read and no compare-and-set saw: dropped (see above).
    let observed: HashSet<u64> = history
        .iter()
        .filter_map(|e| match e.op {
            Op::Read(v) => v,
            Op::Cas { from, .. } => Some(from),
            Op::Write(_) => None,
        })
        .collect();
    let kept: Vec<Event> = history
        .iter()
        .filter(|e| {
            e.ret.is_some()
                || match e.op {
                    Op::Write(v) | Op::Cas { to: v, .. } => observed.contains(&v),
                    Op::Read(_) => false,
                }
        })
        .cloned()
        .collect();
    let history = &kept[..];
    let n = history.len();
    if n > 4096 {
        return Err(format!("history of {n} operations is too long to check"));
    }
    // Completed operations must all be linearized; unknown ones may be left out.
    let completed: Vec<usize> = (0..n).filter(|i| history[*i].ret.is_some()).collect();
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // Depth-first search over (set of linearized ops, register state).
    let mut stack: Vec<(Vec<u64>, Option<u64>)> = vec![(vec![0; words], initial)];
    let mut best = 0usize;
    let mut explored = 0u64;
    while let Some((done, state)) = stack.pop() {
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        let count = completed.iter().filter(|i| is_done(**i)).count();
        best = best.max(count);
        if count == completed.len() {
            return Ok(());
        }
        explored += 1;
        if explored > 5_000_000 {
            return Err("linearizability search exceeded 5M states".into());
        }
        // Only operations invoked before the earliest return among the pending completed
        // operations can come next (real-time order).
        let horizon = completed
            .iter()
            .filter(|i| !is_done(**i))
            .filter_map(|i| history[*i].ret)
            .min()
            .unwrap_or(u128::MAX);
        for (i, e) in history.iter().enumerate() {
            if is_done(i) || e.invoke > horizon {
                continue;
            }
            let mut outcomes = vec![e.op.clone()];
            if e.ret.is_none()
                && let Op::Cas { from, to, ok } = e.op
            {
                outcomes.push(Op::Cas { from, to, ok: !ok });
            }
            for op in outcomes {
                if let Some(next) = step(state, &op) {
                    let mut d = done.clone();
                    d[i / 64] |= 1 << (i % 64);
                    if seen.insert((d.clone(), next)) {
                        stack.push((d, next));
                    }
                }
            }
        }
    }
    Err(format!(
        "not linearizable: at most {best} of {} completed operations can be ordered",
        completed.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, invoke: u128, ret: u128) -> Event {
        Event {
            op,
            invoke,
            ret: Some(ret),
        }
    }

    #[test]
    fn accepts_and_rejects() {
        // w1 then r1: fine.
        assert!(check(&[ev(Op::Write(1), 0, 1), ev(Op::Read(Some(1)), 2, 3)]).is_ok());
        // A read after a completed write sees the old value: stale read.
        assert!(check(&[ev(Op::Write(1), 0, 1), ev(Op::Read(None), 2, 3)]).is_err());
        // Concurrent: the read may go before the write.
        assert!(check(&[ev(Op::Write(1), 0, 5), ev(Op::Read(None), 1, 2)]).is_ok());
        // Two CAS from the same value cannot both succeed.
        let h = [
            ev(Op::Write(1), 0, 1),
            ev(
                Op::Cas {
                    from: 1,
                    to: 2,
                    ok: true,
                },
                2,
                5,
            ),
            ev(
                Op::Cas {
                    from: 1,
                    to: 3,
                    ok: true,
                },
                2,
                5,
            ),
        ];
        assert!(check(&h).is_err());
        // An unknown write may have happened...
        let unknown = Event {
            op: Op::Write(7),
            invoke: 0,
            ret: None,
        };
        assert!(check(&[unknown.clone(), ev(Op::Read(Some(7)), 5, 6)]).is_ok());
        // ...or not.
        assert!(check(&[unknown.clone(), ev(Op::Read(None), 5, 6)]).is_ok());
        // But not both: once seen, it cannot be unseen.
        assert!(
            check(&[
                unknown,
                ev(Op::Read(Some(7)), 5, 6),
                ev(Op::Read(None), 7, 8)
            ])
            .is_err()
        );
    }

    #[test]
    fn many_unknown_writes_stay_cheap() {
        // 60 concurrent writes that timed out, 2 of them seen, among completed reads.
        let mut h: Vec<Event> = (0..60)
            .map(|i| Event {
                op: Op::Write(100 + i),
                invoke: i as u128,
                ret: None,
            })
            .collect();
        h.push(ev(Op::Read(Some(105)), 100, 101));
        h.push(ev(Op::Read(Some(150)), 102, 103));
        h.push(ev(Op::Read(Some(150)), 104, 105));
        let t = std::time::Instant::now();
        assert!(check(&h).is_ok());
        // Seeing the older value again after the newer one is not linearizable.
        h.push(ev(Op::Read(Some(105)), 106, 107));
        assert!(check(&h).is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
