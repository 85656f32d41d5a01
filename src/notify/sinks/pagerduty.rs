//! The pagerduty sink (being written).

use super::{Delivered, DeliveryError, SinkPlan};

/// Deliver (not implemented yet).
pub async fn send(
    _http: &reqwest::Client,
    sink: &SinkPlan,
    _msg: &crate::notify::TicketEvent,
) -> Result<Delivered, DeliveryError> {
    Err(DeliveryError::Permanent {
        reason: format!(
            "sink {}: pagerduty delivery is not implemented yet",
            sink.name
        ),
    })
}
