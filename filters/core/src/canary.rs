//! (filled in by the canary issue)
