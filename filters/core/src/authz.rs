//! (filled in by the authz issue)
