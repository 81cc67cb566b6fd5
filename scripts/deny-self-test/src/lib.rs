//! Never built: only its dependency graph is checked (see Cargo.toml).
