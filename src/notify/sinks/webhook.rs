//! The webhook sink (being written).

use super::{Delivered, DeliveryError, SinkPlan};

/// Deliver (not implemented yet).
pub async fn send(
    _http: &reqwest::Client,
    sink: &SinkPlan,
    _msg: &crate::notify::Message,
) -> Result<Delivered, DeliveryError> {
    Err(DeliveryError::Permanent {
        reason: format!(
            "sink {}: webhook delivery is not implemented yet",
            sink.name
        ),
    })
}
