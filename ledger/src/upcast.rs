//! Schema evolution: events keep the schema version they were written with;
//! upcasters registered per type lift old payloads to the current shape on read.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::envelope::RecordedEvent;
use crate::error::LedgerError;

/// Why an upcaster could not lift a payload: any error, kept whole so that
/// [`LedgerError::Decode`] can hand it on as its `source()`. A `&str` or a
/// `String` converts into it with `?` or `.into()`.
pub type UpcastError = Box<dyn std::error::Error + Send + Sync>;

/// Lifts a payload of one schema version to the next.
pub type Upcast = Box<dyn Fn(Value) -> Result<Value, UpcastError> + Send + Sync>;

/// The upcasters of every event type: `(type, from_version) → step to from_version + 1`.
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Upcast>,
    current: HashMap<String, u32>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasters")
            .field("current", &self.current)
            .finish()
    }
}

impl Upcasters {
    /// No upcasters: every type is at version 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` of `event_type`.
    #[must_use]
    pub fn register(
        mut self,
        event_type: &str,
        from_version: u32,
        step: impl Fn(Value) -> Result<Value, UpcastError> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.to_owned(), from_version), Box::new(step));
        let current = self.current.entry(event_type.to_owned()).or_insert(1);
        *current = (*current).max(from_version + 1);
        self
    }

    /// The version new events of this type are written with.
    pub fn current_version(&self, event_type: &str) -> u32 {
        self.current.get(event_type).copied().unwrap_or(1)
    }

    /// The payload lifted to the current version of its type.
    ///
    /// # Errors
    /// [`LedgerError::Decode`] when a step is missing or fails, or the payload is newer than known.
    pub fn upcast(&self, event: &RecordedEvent) -> Result<Value, LedgerError> {
        let current = self.current_version(&event.event_type);
        if event.schema_version > current {
            return Err(decode_error(
                event,
                format!(
                    "written with schema version {} but this binary knows up to {current}",
                    event.schema_version
                ),
                None,
            ));
        }
        let mut value: Value = serde_json::from_str(&event.payload)
            .map_err(|e| decode_error(event, "invalid JSON payload".into(), Some(Arc::new(e))))?;
        for version in event.schema_version..current {
            let step = self
                .steps
                .get(&(event.event_type.clone(), version))
                .ok_or_else(|| {
                    decode_error(event, format!("no upcaster from version {version}"), None)
                })?;
            value = step(value).map_err(|e| {
                decode_error(
                    event,
                    format!("upcast from v{version} failed"),
                    Some(Arc::from(e)),
                )
            })?;
        }
        Ok(value)
    }

    /// Decodes the event into `T`, upcasting first when it was written with an older schema.
    ///
    /// # Errors
    /// [`LedgerError::Decode`] when upcasting or deserialising fails.
    pub fn decode<T: DeserializeOwned>(&self, event: &RecordedEvent) -> Result<T, LedgerError> {
        let shape_error = |e: serde_json::Error| {
            decode_error(
                event,
                "payload does not fit the type".into(),
                Some(Arc::new(e)),
            )
        };
        if event.schema_version == self.current_version(&event.event_type) {
            // The common case: no intermediate Value.
            return serde_json::from_str(&event.payload).map_err(shape_error);
        }
        serde_json::from_value(self.upcast(event)?).map_err(shape_error)
    }
}

/// A [`LedgerError::Decode`] for `event`, keeping `source` as its cause.
fn decode_error(
    event: &RecordedEvent,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
) -> LedgerError {
    LedgerError::Decode {
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        message,
        source,
    }
}
