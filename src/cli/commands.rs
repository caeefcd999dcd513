//! The commands that read manifests or another scheduler's definitions: `plan`, `validate`,
//! `import`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{ImportArgs, PlanArgs, PlanFormat};

/// `kube-beat plan`: the plan on standard output (all of it, invalid jobs included); exit 1
/// when a job is invalid or a file could not be read.
pub(super) async fn plan(args: &PlanArgs) -> Result<()> {
    use crate::plan;
    let opts = plan::load::Options {
        files: args.files.clone(),
        namespace: args.namespace.clone(),
        against_cluster: args.against_cluster,
        now: args.now.clone(),
        window: args.window.clone(),
        limits: plan::Limits {
            shown: usize::try_from(args.max_shown).unwrap_or(10),
            top: usize::try_from(args.top).unwrap_or(5),
            busy_threshold: args.busy_threshold,
        },
    };
    let input = plan::load::load(&opts).await?;
    let mut plan = plan::build(&input);
    if args.summary {
        plan.jobs.retain(|j| !j.valid);
    }
    match args.output {
        PlanFormat::Text => print!("{}", plan::render::text(&plan)),
        PlanFormat::Json => print!("{}", plan::render::json(&plan)?),
    }
    if plan.invalid > 0 || !plan.errors.is_empty() {
        anyhow::bail!(
            "{} invalid job(s), {} error(s)",
            plan.invalid,
            plan.errors.len()
        );
    }
    Ok(())
}

/// `kube-beat validate`: every error on standard output, notes on standard error; an error
/// (exit 1) when any object is invalid.
pub(super) async fn validate(files: &[PathBuf], namespace: &str, cluster: bool) -> Result<()> {
    use crate::webhook::offline;
    let lookup = if cluster {
        offline::Lookup::Cluster(
            kube::Client::try_default()
                .await
                .context("connecting to the cluster (--cluster)")?,
        )
    } else {
        offline::Lookup::None
    };
    let report = offline::validate(files, namespace, &lookup).await;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    for error in &report.errors {
        println!("{error}");
    }
    if !report.errors.is_empty() {
        anyhow::bail!(
            "{} error(s); {} object(s) checked",
            report.errors.len(),
            report.checked
        );
    }
    eprintln!("{} object(s) valid", report.checked);
    Ok(())
}

/// `kube-beat import`: nothing is written unless every entry converts (or `--skip-invalid`).
pub(super) async fn import(args: &ImportArgs) -> Result<()> {
    use crate::import::{self, SourceKind};
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let opts = import::Options {
        namespace: args.namespace.clone(),
        task_function_prefix: args.task_function_prefix.clone(),
    };
    let now = chrono::Utc::now();
    let result = if args.from == SourceKind::Plan {
        let input = read(std::path::Path::new(&args.source))?;
        let map = args.task_functions.as_deref().map(read).transpose()?;
        import::convert(&input, map.as_deref(), &opts, now)
    } else {
        anyhow::ensure!(
            args.task_functions.is_none(),
            "--task-functions applies to --from plan only"
        );
        let read_opts = import::ReadOptions {
            python: args.python.clone(),
            redbeat_key_prefix: args.redbeat_key_prefix.clone(),
            apscheduler_table: args.apscheduler_table.clone(),
        };
        match import::read(args.from, &args.source, &read_opts).await {
            Ok(entries) => import::render(args.from, entries, &opts, now),
            Err(e) => import::Imported {
                errors: vec![e],
                ..import::Imported::default()
            },
        }
    };
    eprint!("{}", result.report_text());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&result.report(args.from))?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let source_broken = result
        .errors
        .iter()
        .any(import::ImportError::is_source_error);
    if source_broken || (!result.errors.is_empty() && !args.skip_invalid) {
        anyhow::bail!(
            "{} entr{} not converted: nothing written (fix them, or pass --skip-invalid)",
            result.errors.len(),
            if result.errors.len() == 1 { "y" } else { "ies" }
        );
    }
    let yaml = result.yaml().context("rendering YAML")?;
    match &args.output {
        Some(p) => std::fs::write(p, yaml).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{yaml}"),
    }
    let jobs = result
        .objects
        .iter()
        .filter(|o| o["kind"] == "ScheduledJob")
        .count();
    eprintln!(
        "converted {jobs} job(s); {} not converted",
        result.errors.len()
    );
    Ok(())
}
