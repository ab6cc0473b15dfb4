//! SIPp end to end (filled in below).
