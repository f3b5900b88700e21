//! Function settings (helper B).
