//! # eventbus-dlq
//!
//! Dead letters: the envelope that keeps a failed record's key, value, headers and
//! timestamp with its failure context, the classifier, and the inspect, replay, export
//! and import tools behind `eventbus dlq`. Nothing is implemented yet: until this crate is
//! filled, a failed record stops its job without committing past it, so nothing is lost.
#![forbid(unsafe_code)]
