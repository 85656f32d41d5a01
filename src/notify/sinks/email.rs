//! The email sink (being written).

use super::{Delivered, DeliveryError, SinkPlan};

/// Deliver (not implemented yet).
pub async fn send(
    sink: &SinkPlan,
    _digest: &crate::notify::Digest,
) -> Result<Delivered, DeliveryError> {
    Err(DeliveryError::Permanent {
        reason: format!("sink {}: email delivery is not implemented yet", sink.name),
    })
}
