//! (filled in by the jwt issue)
