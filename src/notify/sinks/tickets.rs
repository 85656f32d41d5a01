//! The ticket sinks: GitHub, GitLab, Jira (being written).

use super::{Delivered, DeliveryError, SinkPlan};

/// Deliver (not implemented yet).
pub async fn send(
    _http: &reqwest::Client,
    sink: &SinkPlan,
    _event: &crate::notify::TicketEvent,
    _known: Option<&str>,
) -> Result<Delivered, DeliveryError> {
    Err(DeliveryError::Permanent {
        reason: format!("sink {}: ticket delivery is not implemented yet", sink.name),
    })
}
