//! Empty: the suite is the `gateway` test target (`main.rs`), one binary for every feature so
//! that the application is linked once.
#![forbid(unsafe_code)]
