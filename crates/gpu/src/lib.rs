//! GPU devices for weightlift: the CUDA driver API and HIP, both loaded at
//! run time so that nothing GPU-related is needed to build or import; pinned
//! host memory, streams, events and asynchronous host-to-device copies.
//!
//! This crate knows devices and buffers, not files. It is a skeleton: the
//! devices arrive with the GPU upload work, together with a host-memory
//! device behind the same trait for testing without a GPU.
