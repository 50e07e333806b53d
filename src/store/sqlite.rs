//! SQLite implementation of the identity store, the zero-setup default.
