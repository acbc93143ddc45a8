//! One module per Kinde endpoint: its method, path, body and answer type, and the
//! public methods of [`Client`](crate::api::Client) that call it. Everything else (token,
//! deadline, body cap, classification) is the shared path in `request.rs`, so a new
//! endpoint is a new module here.

mod billing;
mod meter_usage;
