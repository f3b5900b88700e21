//! The execution environment's kernel objects, one file per concept, and the
//! plan that a zygote child applies (docs/architecture.md).
