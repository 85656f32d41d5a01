//! Planning alerts (being written).
