//! The opsrun worker as a library: the consumer loop ([`consumer`]), the
//! exec handler ([`exec`]) configured by a handlers file ([`handlers`]), and
//! the built-in demo types ([`demo`]). The `worker` binary is thin over it;
//! Rust services can embed it with their own [`opsrun::lifecycle::Handler`]s.

pub mod consumer;
pub mod demo;
pub mod exec;
pub mod handlers;

use std::sync::Arc;

use opsrun::lifecycle::{Lifecycle, Route};
use opsrun::{Ledger, Transport};

/// A lifecycle with a route for every type of `handlers` (exec) and for the
/// built-in demo types.
pub fn lifecycle_for(
    ledger: Ledger,
    transport: Transport,
    holder: &str,
    handlers: &handlers::HandlersFile,
) -> Lifecycle {
    let mut lifecycle = Lifecycle::new(ledger, transport, holder);
    let demo_limit = if handlers.default_time_limit.is_zero() {
        handlers::DEFAULT_TIME_LIMIT
    } else {
        handlers.default_time_limit
    };
    for name in demo::DEMO_TYPES {
        lifecycle = lifecycle.route(
            *name,
            Route {
                handler: Arc::new(demo::DemoHandler),
                time_limit: demo_limit,
            },
        );
    }
    for (name, spec) in &handlers.types {
        lifecycle = lifecycle.route(
            name.clone(),
            Route {
                handler: Arc::new(exec::ExecHandler::new(spec)),
                time_limit: spec.time_limit,
            },
        );
    }
    lifecycle
}
