//! The ground floor: the vocabulary every other module shares (documents and their ids, hashing,
//! exit codes, reading the environment, secrets, atomic files). Nothing here imports a module of
//! this crate outside `base`.

pub mod atomic;
pub mod chain;
pub mod document;
pub mod env;
pub mod exit;
pub mod failpoint;
pub mod hash;
pub mod json;
pub mod secret;
pub mod sink;
pub mod source;
