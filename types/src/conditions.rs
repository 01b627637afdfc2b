//! Pure helpers for Kubernetes-style `status.conditions`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The condition of type `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition is present with status "True".
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change (so a
/// reconcile that observes the same thing again writes nothing new). Returns whether anything
/// changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason != reason
                || c.message != message
                || c.observed_generation != observed_generation;
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_only_moves_on_status_change() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut cs = vec![];
        assert!(set_condition(
            &mut cs,
            "Ready",
            false,
            "Waiting",
            "",
            Some(1),
            t0
        ));
        assert!(!set_condition(
            &mut cs,
            "Ready",
            false,
            "Waiting",
            "",
            Some(1),
            t1
        ));
        assert_eq!(cs[0].last_transition_time.0, t0);
        assert!(set_condition(
            &mut cs,
            "Ready",
            true,
            "Done",
            "",
            Some(1),
            t1
        ));
        assert_eq!(cs[0].last_transition_time.0, t1);
        assert!(condition_is_true(&cs, "Ready"));
    }
}
