//! Policy selection and access control: which policy applies to a request, and whether its claims suffice.

pub mod access;
pub mod routes;
