//! PostgreSQL (and Neon) implementation of the identity store.
