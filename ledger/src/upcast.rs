//! Schema evolution: events keep the schema version they were written with;
//! upcasters registered per type lift old payloads to the current shape on read.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::envelope::RecordedEvent;
use crate::error::LedgerError;

/// Lifts a payload of one schema version to the next.
pub type Upcast = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

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
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
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
        let decode_error = |message: String| LedgerError::Decode {
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            message,
        };
        let current = self.current_version(&event.event_type);
        if event.schema_version > current {
            return Err(decode_error(format!(
                "written with schema version {} but this binary knows up to {current}",
                event.schema_version
            )));
        }
        let mut value: Value =
            serde_json::from_str(&event.payload).map_err(|e| decode_error(e.to_string()))?;
        for version in event.schema_version..current {
            let step = self
                .steps
                .get(&(event.event_type.clone(), version))
                .ok_or_else(|| decode_error(format!("no upcaster from version {version}")))?;
            value = step(value)
                .map_err(|message| decode_error(format!("upcast from v{version}: {message}")))?;
        }
        Ok(value)
    }

    /// Decodes the event into `T`, upcasting first when it was written with an older schema.
    ///
    /// # Errors
    /// [`LedgerError::Decode`] when upcasting or deserialising fails.
    pub fn decode<T: DeserializeOwned>(&self, event: &RecordedEvent) -> Result<T, LedgerError> {
        let decode_error = |message: String| LedgerError::Decode {
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            message,
        };
        if event.schema_version == self.current_version(&event.event_type) {
            // The common case: no intermediate Value.
            return serde_json::from_str(&event.payload).map_err(|e| decode_error(e.to_string()));
        }
        serde_json::from_value(self.upcast(event)?).map_err(|e| decode_error(e.to_string()))
    }
}
