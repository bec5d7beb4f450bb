//! The opsrun worker as a library: the consumer loop ([`consumer`]), the
//! exec handler ([`exec`]) configured by the type registry
//! ([`opsrun::registry`]), and the built-in demo types ([`demo`]). The
//! `worker` binary is thin over it; Rust services can embed it with their own
//! [`opsrun::lifecycle::Handler`]s.

pub mod consumer;
pub mod demo;
pub mod exec;
pub mod isolation;

use std::collections::BTreeMap;
use std::sync::Arc;

use opsrun::lifecycle::{Handler, Lifecycle, Route};
use opsrun::registry::{HandlerSpec, Registry};
use opsrun::{Ledger, Transport};

/// Rust handlers this binary can run by name (`handler = "demo"` in the registry).
pub const RUST_HANDLERS: &[&str] = &["demo"];

/// Check that every Rust handler the registry names exists in this worker,
/// and every `run_as` user on this machine.
pub fn check_handlers(registry: &Registry) -> Result<(), String> {
    for (name, spec) in &registry.types {
        if let Some(HandlerSpec::Exec {
            run_as: Some(user), ..
        }) = &spec.handler
        {
            exec::JobUser::resolve(user).map_err(|e| format!("types.\"{name}\".{e}"))?;
        }
        if let Some(HandlerSpec::Rust { name: handler }) = &spec.handler
            && !RUST_HANDLERS.contains(&handler.as_str())
        {
            return Err(format!(
                "types.\"{name}\".handler: no Rust handler named {handler:?} in this worker (it has: {})",
                RUST_HANDLERS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A lifecycle with a route for every declared type of `registry` (exec
/// commands and the named Rust handlers) and for the built-in demo types.
/// Exec jobs see the variables their type inherits from `worker_env` (the
/// worker's environment as it started). `Err` names a type whose Rust
/// handler this worker does not have, or whose `run_as` user is unknown.
pub fn lifecycle_for(
    ledger: Ledger,
    transport: Transport,
    holder: &str,
    registry: &Registry,
    worker_env: &BTreeMap<String, String>,
    concurrency: u32,
) -> Result<Lifecycle, String> {
    check_handlers(registry)?;
    let mut lifecycle = Lifecycle::new(ledger, transport, holder)
        .slot_credits(concurrency)
        .group_commit();
    for name in demo::DEMO_TYPES {
        let spec = registry.spec(name).unwrap_or(&registry.defaults);
        lifecycle = lifecycle.route(*name, Route::new(Arc::new(demo::DemoHandler), spec));
    }
    for (name, spec) in &registry.types {
        let handler: Arc<dyn Handler> = match &spec.handler {
            None => continue,
            Some(HandlerSpec::Exec {
                command,
                working_dir,
                env,
                inherit_env,
                run_as,
            }) => {
                let user = run_as
                    .as_deref()
                    .map(exec::JobUser::resolve)
                    .transpose()
                    .map_err(|e| format!("types.\"{name}\".{e}"))?;
                if user.is_none() && nix::unistd::geteuid().is_root() {
                    tracing::warn!(r#type = %name, "exec jobs of this type run as root, like the worker: they can read its secret files; set run_as in the registry");
                }
                let job_env =
                    exec::ExecHandler::job_env(inherit_env, env, worker_env, user.as_ref());
                Arc::new(exec::ExecHandler::new(
                    command.clone(),
                    working_dir.clone(),
                    job_env,
                    user,
                ))
            }
            // check_handlers made sure the name is one of RUST_HANDLERS.
            Some(HandlerSpec::Rust { .. }) => Arc::new(demo::DemoHandler),
        };
        lifecycle = lifecycle.route(name.clone(), Route::new(handler, spec));
    }
    Ok(lifecycle)
}
