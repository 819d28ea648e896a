//! (filled in by the fault issue)
