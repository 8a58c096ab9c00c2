//! Every query the manager runs, grouped by table family. Handlers (REST,
//! console, gRPC) call these and never write SQL themselves.

pub mod audit;
pub mod clusters;
pub mod instances;
pub mod preheat;
pub mod traffic;
pub mod users;
