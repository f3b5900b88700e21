//! Registry (helper B).
