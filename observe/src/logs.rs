//! The per-object log hub. Every controller reconcile runs in a span carrying
//! `object = "kind/name"`; [`HubLayer`] copies each log line emitted inside such a span into a
//! bounded ring per object, and broadcasts it to followers (`groundwork logs node/X -f`).
//!
//! Bounded: at most `lines_per_object` lines per object and `max_objects` objects (the object
//! written to least recently is dropped first). A follower that falls behind the broadcast
//! buffer skips lines and is told so, rather than slowing the controllers.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// One log line about one object.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Global sequence number (orders lines; lets a follower skip what it already printed).
    pub seq: u64,
    /// `kind/name`, lower-case kind.
    pub object: String,
    /// Formatted: `TIMESTAMP LEVEL controller: message key=value ...`.
    pub text: String,
}

struct HubState {
    seq: u64,
    lines: HashMap<String, VecDeque<Arc<LogLine>>>,
    /// Objects in order of their last line, oldest first (for eviction).
    recency: VecDeque<String>,
}

/// The shared log hub of a process. Cheap to clone.
#[derive(Clone)]
pub struct LogHub {
    state: Arc<Mutex<HubState>>,
    tx: broadcast::Sender<Arc<LogLine>>,
    lines_per_object: usize,
    max_objects: usize,
}

impl LogHub {
    pub fn new(lines_per_object: usize, max_objects: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        LogHub {
            state: Arc::new(Mutex::new(HubState {
                seq: 0,
                lines: HashMap::new(),
                recency: VecDeque::new(),
            })),
            tx,
            lines_per_object: lines_per_object.max(1),
            max_objects: max_objects.max(1),
        }
    }

    /// The tracing layer that feeds this hub.
    pub fn layer(&self) -> HubLayer {
        HubLayer { hub: self.clone() }
    }

    /// Records a line about `object` (normally done by [`HubLayer`]).
    pub fn push(&self, object: &str, text: String) {
        let object = object.to_ascii_lowercase();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seq += 1;
        let line = Arc::new(LogLine {
            seq: st.seq,
            object: object.clone(),
            text,
        });
        let ring = st.lines.entry(object.clone()).or_default();
        ring.push_back(line.clone());
        while ring.len() > self.lines_per_object {
            ring.pop_front();
        }
        if let Some(pos) = st.recency.iter().rposition(|o| *o == object) {
            st.recency.remove(pos);
        }
        st.recency.push_back(object);
        while st.recency.len() > self.max_objects {
            if let Some(old) = st.recency.pop_front() {
                st.lines.remove(&old);
            }
        }
        drop(st);
        // No receivers is fine.
        let _ = self.tx.send(line);
    }

    /// The last `tail` lines about `object` (all kept lines when `None`), oldest first.
    pub fn tail(&self, object: &str, tail: Option<usize>) -> Vec<Arc<LogLine>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ring) = st.lines.get(&object.to_ascii_lowercase()) else {
            return Vec::new();
        };
        let skip = tail.map_or(0, |n| ring.len().saturating_sub(n));
        ring.iter().skip(skip).cloned().collect()
    }

    /// Every new line, for every object. Subscribe before calling [`LogHub::tail`] and skip
    /// lines whose `seq` is not above the tail's last, to follow without gaps or repeats.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.tx.subscribe()
    }
}

/// The `object` and `controller` fields of a reconcile span.
struct SpanObject {
    object: String,
    controller: Option<String>,
}

#[derive(Default)]
struct SpanFields {
    object: Option<String>,
    controller: Option<String>,
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "object" => self.object = Some(value.to_string()),
            "controller" => self.controller = Some(value.to_string()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, format!("{value:?}").trim_matches('"'));
    }
}

#[derive(Default)]
struct EventFields {
    message: String,
    rest: String,
    object: Option<String>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "object" => self.object = Some(value.to_string()),
            name => {
                let _ = if value.contains(char::is_whitespace) || value.is_empty() {
                    write!(self.rest, " {name}={value:?}")
                } else {
                    write!(self.rest, " {name}={value}")
                };
            }
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            _ => {
                let s = format!("{value:?}");
                self.record_str(field, &s);
            }
        }
    }
}

/// Copies log lines emitted inside a span with an `object` field into the [`LogHub`].
pub struct HubLayer {
    hub: LogHub,
}

impl<S> Layer<S> for HubLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = SpanFields::default();
        attrs.record(&mut f);
        if let (Some(object), Some(span)) = (f.object, ctx.span(id)) {
            span.extensions_mut().insert(SpanObject {
                object,
                controller: f.controller,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut target: Option<(String, Option<String>)> = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(o) = span.extensions().get::<SpanObject>() {
                    target = Some((o.object.clone(), o.controller.clone()));
                    break;
                }
            }
        }
        let mut f = EventFields::default();
        event.record(&mut f);
        let (object, controller) = match (target, f.object.take()) {
            (_, Some(o)) => (o, None),
            (Some((o, c)), None) => (o, c),
            (None, None) => return,
        };
        let ts = jiff::Timestamp::now();
        let who = controller.unwrap_or_else(|| event.metadata().target().to_string());
        let text = format!(
            "{ts:.3} {:>5} {who}: {}{}",
            event.metadata().level(),
            f.message,
            f.rest
        );
        self.hub.push(&object, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_inside_object_spans_are_kept_per_object() {
        let hub = LogHub::new(3, 2);
        let sub = tracing_subscriber::registry().with(hub.layer());
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("reconcile", controller = "rack", object = "rack/a1");
            let _g = span.enter();
            for i in 0..5 {
                tracing::info!(step = i, why = "two words", "placed");
            }
            drop(_g);
            tracing::info!("not about any object");
            tracing::warn!(object = "node/n1", "direct");
        });
        let lines = hub.tail("rack/a1", None);
        assert_eq!(lines.len(), 3, "ring keeps the last 3");
        assert!(
            lines[2]
                .text
                .contains("INFO rack: placed step=4 why=\"two words\""),
            "{}",
            lines[2].text
        );
        assert_eq!(hub.tail("RACK/A1", Some(1)).len(), 1);
        assert_eq!(hub.tail("node/n1", None).len(), 1);
        assert!(hub.tail("node/n1", None)[0].text.contains("WARN"));
    }

    #[test]
    fn least_recent_objects_are_evicted() {
        let hub = LogHub::new(10, 2);
        hub.push("node/a", "1".into());
        hub.push("node/b", "2".into());
        hub.push("node/a", "3".into());
        hub.push("node/c", "4".into());
        assert!(hub.tail("node/b", None).is_empty());
        assert_eq!(hub.tail("node/a", None).len(), 2);
        assert_eq!(hub.tail("node/c", None).len(), 1);
    }

    #[test]
    fn subscribers_get_new_lines_in_order() {
        let hub = LogHub::new(10, 10);
        let mut rx = hub.subscribe();
        hub.push("node/a", "x".into());
        hub.push("node/b", "y".into());
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert!(a.seq < b.seq);
        assert_eq!(b.object, "node/b");
    }
}
