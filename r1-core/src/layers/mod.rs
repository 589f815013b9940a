//! The building blocks every model is made of.

pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
