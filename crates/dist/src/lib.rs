//! Loading across a process group: which rank reads which extents of a
//! [`weightlift_plan::ReadPlan`] (so each byte is read from storage once per
//! group), and the exchange schedule (broadcast, all-gather, scatter) that
//! gives every rank the tensors it asked for.
//!
//! It is a skeleton: [`weightlift_plan::ReadPlan::split`] already cuts a plan
//! into balanced shares; the exchange arrives with the distributed work.
