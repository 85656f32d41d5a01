//! Rendering a digest into each chat target's payload, cut with "…and N more" before the target's size limit
//! (being written).
