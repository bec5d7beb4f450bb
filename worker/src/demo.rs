//! Built-in demo types, so the demo and the benchmark run without writing a
//! handler: `demo.succeed`, `demo.partial`, `demo.fail`, `demo.noop`,
//! `demo.sleep`. Each waits `inputs.sleep_ms` (default 0) to look like work.

use std::time::Duration;

use async_trait::async_trait;
use opsrun::lifecycle::{Handler, Job, JobReport, JobResult};
use opsrun::{Failure, SummaryCounts};

/// The demo type names.
pub const DEMO_TYPES: &[&str] = &[
    "demo.succeed",
    "demo.partial",
    "demo.fail",
    "demo.noop",
    "demo.sleep",
];

/// Handles every `demo.*` type.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoHandler;

#[async_trait]
impl Handler for DemoHandler {
    async fn handle(&self, job: Job) -> JobResult {
        let sleep_ms = job
            .inputs()
            .get("sleep_ms")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
        }
        let items = job
            .inputs()
            .get("items")
            .and_then(|v| v.as_u64())
            .unwrap_or(10);
        match job.run.run_type.as_str() {
            "demo.succeed" | "demo.sleep" => JobResult::Finished(JobReport {
                summary_counts: SummaryCounts {
                    total: items,
                    success: items,
                    failed: 0,
                    skipped: 0,
                },
                ..Default::default()
            }),
            "demo.partial" => {
                let failed = (items / 5).max(1).min(items);
                JobResult::Finished(JobReport {
                    summary_counts: SummaryCounts {
                        total: items,
                        success: items - failed,
                        failed,
                        skipped: 0,
                    },
                    failures: vec![Failure {
                        code: "demo.item_unreachable".into(),
                        message: "some items could not be reached".into(),
                        count: failed,
                    }],
                    outcome: None,
                })
            }
            // The message carries a fake credential to show the sanitizer at work.
            "demo.fail" => JobResult::failed(
                "demo.provider_rejected",
                "provider rejected the request to https://svc:demo-password@provider.example/api (token=abc123def456)",
            ),
            _ => JobResult::succeeded(),
        }
    }
}
