//! Executes a [`weightlift_plan::ReadPlan`]: reads its extents with one of
//! several backends (io_uring, Linux AIO, a pread thread pool, mmap) into a
//! bounded ring of aligned staging slots, or straight into their final place,
//! and hands each completed slot to a consumer.
//!
//! This crate knows extents and buffers, not safetensors. It is a skeleton:
//! the engine and its backends arrive with the I/O engine work.
