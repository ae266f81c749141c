//! The wxmp binary's integration tests, one binary: the JavaScript suites under node.

mod node;
