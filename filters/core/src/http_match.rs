//! (filled in by the http_match issue)
