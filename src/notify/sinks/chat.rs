//! The chat sink (being written).

use super::{Delivered, DeliveryError, SinkPlan};

/// Deliver (not implemented yet).
pub async fn send(
    _http: &reqwest::Client,
    sink: &SinkPlan,
    _msg: &crate::notify::Digest,
) -> Result<Delivered, DeliveryError> {
    Err(DeliveryError::Permanent {
        reason: format!("sink {}: chat delivery is not implemented yet", sink.name),
    })
}
