//! Tokio driver for the Ferry protocol.
