//! madda-core: the non-network hot paths of M-ADDA, in plain Rust.
//!
//! * [`triplets`]: Algorithm 1's per-batch triplet enumeration (one triple per same-label pair).
//! * [`knn`]: exact k-nearest-neighbour search and mode voting (Algorithm 3), tiled so the
//!   full distance matrix never exists.
//! * [`index`]: the same exact kNN over a source set added in pieces (e.g. memory-mapped
//!   files), and the exact merge of per-piece results that ranks of a distributed job exchange.
//! * [`pool`]: a rayon pool that is rebuilt after `fork()`.
//!
//! Every entry point validates its input and returns [`Error`]; none panics on user data.

mod error;
pub mod index;
pub mod knn;
pub mod pool;
pub mod triplets;

pub use error::Error;
pub use knn::{
    knn_predict, knn_predict_with, knn_search, knn_search_counted, knn_search_with, vote, Kernel, Neighbors,
    SearchStats,
};
pub use triplets::{triplets, NegativeMode, TripletOptions, MAX_TRIPLETS};
