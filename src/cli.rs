//! CLI (helper D).
pub fn main() -> i32 { 0 }
