//! `commerce bench chaos`: every fault scenario of [`api::chaos::scenarios`] in turn,
//! each on a database of its own, with a table of what each found and one JSON line:
//! `value` is the number of scenarios passed (of `scenarios`), with the `lost` and
//! `duplicated` commands summed over all of them (both must be 0).

use anyhow::{ensure, Result};
use api::chaos::scenarios::{self, Scenario, Settings};
use serde_json::json;

pub async fn run(database_url: &str, settings: &Settings, only: Option<&str>) -> Result<()> {
    let chosen: Vec<Scenario> = Scenario::all()
        .into_iter()
        .filter(|s| only.is_none_or(|only| s.name().contains(only)))
        .collect();
    ensure!(!chosen.is_empty(), "no scenario matches {only:?}");
    println!(
        "chaos benchmark: {} scenarios, {} stock-receipt writers and {} checkouts each, faults of {} s",
        chosen.len(),
        settings.writers,
        settings.checkouts,
        settings.fault_for.as_secs()
    );
    println!(
        "  {:<18} {:>6} {:>6} {:>5} {:>5} {:>7} {:>9} {:>9} {:>9}  result",
        "scenario", "acked", "found", "lost", "dup", "refused", "slowest", "recovery", "checkouts"
    );
    let mut passed = 0;
    let (mut lost, mut duplicated) = (0, 0);
    let mut rows = Vec::new();
    for scenario in &chosen {
        let report = scenarios::run(database_url, *scenario, settings).await?;
        let failures = report.failures(*scenario);
        lost += report.lost;
        duplicated += report.duplicated;
        if failures.is_empty() {
            passed += 1;
        }
        println!(
            "  {:<18} {:>6} {:>6} {:>5} {:>5} {:>7} {:>8.1}s {:>8} {:>4}/{:<4}  {}",
            report.scenario,
            report.acknowledged,
            report.found,
            report.lost,
            report.duplicated,
            report.refused,
            report.slowest_refusal.as_secs_f64(),
            report
                .recovery
                .map_or("never".into(), |r| format!("{:.2}s", r.as_secs_f64())),
            report.checkouts_completed,
            report.checkouts_completed + report.checkouts_not_completed,
            if failures.is_empty() {
                "pass".to_owned()
            } else {
                format!("FAIL: {}", failures.join("; "))
            }
        );
        rows.push(json!({
            "scenario": report.scenario,
            "acknowledged": report.acknowledged,
            "found": report.found,
            "lost": report.lost,
            "duplicated": report.duplicated,
            "refused": report.refused,
            "slowest_refusal_ms": report.slowest_refusal.as_millis() as u64,
            "recovery_ms": report.recovery.map(|r| r.as_millis() as u64),
            "ready_reported_outage": report.ready_reported_outage,
            "breaker_opened": report.breaker_opened,
            "breaker_closed_after": report.breaker_closed_after,
            "checkouts_completed": report.checkouts_completed,
            "checkouts_not_completed": report.checkouts_not_completed,
            "unanswered": report.unanswered,
            "stuck_reservations": report.stuck_reservations,
            "oversold": report.oversold,
            "violations": report.violations,
            "passed": failures.is_empty(),
        }));
    }
    println!(
        "{}",
        json!({
            "bench": "chaos",
            "unit": "scenarios passed",
            "value": passed,
            "baseline": chosen.len(),
            "baseline_what": "scenarios run (all must pass)",
            "scenarios": chosen.len(),
            "lost": lost,
            "duplicated": duplicated,
            "runs": rows,
        })
    );
    ensure!(
        passed == chosen.len(),
        "{} scenarios failed",
        chosen.len() - passed
    );
    Ok(())
}
