//! Policies at work: which one applies to a request ([`routes`]), each compiled for the hot path ([`runtime`]),
//! whether its claims suffice ([`access`]), and what goes upstream ([`headers`]).

pub mod access;
pub mod headers;
pub mod routes;
pub mod runtime;
