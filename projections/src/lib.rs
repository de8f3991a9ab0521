//! The read side of the engine: projections that fold the log into read models.
