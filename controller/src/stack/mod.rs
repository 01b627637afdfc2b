//! The ServiceStack controller: places each layer's services on machines as
//! ServiceInstances, gates layers on their dependencies, rolls changes out one member at a
//! time, and reports per layer.

pub mod drivers;
