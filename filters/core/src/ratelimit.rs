//! (filled in by the ratelimit issue)
