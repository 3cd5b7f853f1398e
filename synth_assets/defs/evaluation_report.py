"""The `evaluation_report` asset: every metric of a run, deltas against the last good run, and a
blocking usefulness gate that decides publication: the staged curated_set version it evaluated is
published (becomes what `synth-assets export` writes and readers see) only when the gate passes, and
a failed run never becomes the next baseline."""

import json

import dagster as dg
import pandas as pd

from synth_assets.defs.common import GROUP, OWNERS, gate_spec, spec_partitions
from synth_assets.defs.curated_set import curated_set
from synth_assets.defs.resources import SpecCatalog, WarehouseResource
from synth_assets.embeddings import embed
from synth_assets.evaluation.gate import (
    GATE_CHECK,
    GATE_METRIC,
    Comparison,
    GateVerdict,
    PublicationDecision,
    publication_decision,
)
from synth_assets.evaluation.inputs import EvaluationInputError, last_good_run, load_inputs
from synth_assets.evaluation.report import UI_METRICS, build_report, write_report
from synth_assets.storage import Publication, Stage


def _number(value: float | None) -> float | str:
    return round(value, 4) if value is not None else "n/a"


def _interval(comparison: Comparison | None) -> str:
    if comparison is None or not comparison.delta_ci:
        return "n/a"
    return f"[{comparison.delta_ci[0]:+.3f}, {comparison.delta_ci[1]:+.3f}]"


def gate_metadata(verdict: GateVerdict) -> dict[str, object]:
    """Both comparisons of the gate, flat, for the check's UI (numbers or 'n/a'), and the seed
    cross-validation (deciding the same-run side when the holdout cannot, else shown alongside)."""
    same, last, cv = verdict.same_run, verdict.last_good, verdict.seed_cv
    return {
        "metric": verdict.metric,
        "failed_comparisons": ", ".join(verdict.failed_comparisons) or "none",
        # same run: real + curated vs real only, paired bootstrap over the holdout (or, when the
        # holdout cannot judge, over the seed rows' cross-validated predictions)
        "same_run_basis": "seed cross-validation" if same.basis == "seed_cv" else "holdout",
        "same_run_verdict": same.outcome,
        "same_run_real_plus_curated": _number(same.current),
        "same_run_real_only": _number(same.reference),
        "same_run_delta": _number(same.delta),
        "same_run_delta_ci": _interval(same),
        "harm_tolerance": same.tolerance,
        "holdout_rows": same.holdout_rows if same.holdout_rows is not None else "n/a",
        "same_run": same.summary,
        # seed cross-validation: real + curated vs real only, from the seed rows alone
        "seed_cv_verdict": ("decides" if cv is same else cv.outcome) if cv else "not measured",
        "seed_cv_real_plus_curated": _number(cv.current if cv else None),
        "seed_cv_real_only": _number(cv.reference if cv else None),
        "seed_cv_delta": _number(cv.delta if cv else None),
        "seed_cv_delta_ci": _interval(cv),
        "seed_cv_rows": cv.seed_cv_rows if cv and cv.seed_cv_rows is not None else "n/a",
        # regression: this run vs the last good run
        "last_good_verdict": last.outcome,
        "current": _number(last.current),
        "last_good": _number(last.reference),
        "last_good_run": last.reference_run_id or "none",
        "tolerance": last.tolerance,
        "vs_last_good": last.summary,
    }


def _gate_check(verdict: GateVerdict, decision: PublicationDecision) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.summary,
        metadata={**gate_metadata(verdict), "publication": decision.note},
    )


def _publication_metadata(
    decision: PublicationDecision, evaluated: str | None, run_id: str
) -> dict[str, object]:
    return {
        "publication": decision.note,  # "published: ..." or "held back: <reason>; ..."
        "published_curated_version": decision.published_run_id or "none",
        "evaluated_curated_version": evaluated or "none",
        "decided_in_run": run_id,
    }


@dg.asset(
    partitions_def=spec_partitions,
    deps=[curated_set],
    group_name=GROUP,
    kinds={"duckdb", "markdown", "scikitlearn"},
    owners=OWNERS,
    code_version="3",  # 3: seed cross-validation metrics, and the gate judges by them without a holdout
    check_specs=[
        gate_spec(
            "evaluation_report",
            name=GATE_CHECK,
            description=f"{GATE_METRIC} may not be more than evaluation.harm_tolerance below real-only "
            "macro-F1 of the same run (judges the first run too; without a usable holdout, by "
            "cross-validation on the seed rows), nor drop more than "
            "evaluation.usefulness_tolerance below the last good run. Passing publishes the evaluated "
            "curated_set version; a failing report is kept in evaluation_history, not promoted, and "
            "its curated_set version is held back",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext, specs: SpecCatalog, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Diversity, fidelity to the real seed (MAUVE, length KS, centroid distance), relevance and
    label faithfulness, usefulness (train on synthetic, test on real, four ways, bootstrap CIs),
    bias (requested vs realized labels and attributes, yield per condition) and cost; a Markdown
    report with PNG plots next to the DuckDB file, a row in `evaluation_history`, UI metadata.

    Evaluates the newest staged curated_set version (normally this run's) and, in the transaction
    that stores the report, publishes it when the usefulness gate passes or records why it is held
    back; an observation on `curated_set` shows the decision on that asset's page too."""
    spec = specs.spec_for(context)
    store = warehouse.warehouse()
    run_id = context.run.run_id
    try:
        inputs = load_inputs(store, spec.name)
    except EvaluationInputError as exc:
        raise dg.Failure(str(exc)) from exc
    for note in inputs.notes:
        context.log.warning(note)
    baseline = last_good_run(store, spec.name, exclude_run_id=run_id)
    report = build_report(spec, run_id=run_id, inputs=inputs, embed=embed, baseline=baseline)
    verdict = report.verdict
    evaluated = inputs.curated_run_id
    decision = publication_decision(verdict, evaluated, inputs.published_run_id)
    report.publication = decision.note
    written = write_report(
        report, store.path.parent / "reports" / spec.name, inline_plots=spec.evaluation.embed_plots_in_ui
    )
    row = pd.DataFrame(
        [
            {
                "metrics": json.dumps(report.metrics, sort_keys=True),
                "markdown": written.markdown,
                "report_path": str(written.path),
                "details": json.dumps(report.details, sort_keys=True),
                "passed": verdict.passed,
                "gate_summary": verdict.summary,
                "curated_run_id": evaluated,
                "baseline_run_id": baseline.run_id if baseline else None,
            }
        ]
    )
    # one transaction: the report row (promoted only when the gate passed, so a failed run never
    # becomes the "last good run") and the publication decision on the curated_set version it judged
    snapshot = store.write_version(
        Stage.EVALUATION_REPORT,
        spec.name,
        run_id,
        row,
        promote=verdict.passed,
        publication=Publication(Stage.CURATED_SET, evaluated, decision.publish, verdict.reason)
        if evaluated
        else None,
    )
    if verdict.passed:
        context.log.info(f"usefulness gate passed: {verdict.summary}")
        context.log.info(decision.note)
    else:
        context.log.error(f"usefulness gate FAILED, report not promoted: {verdict.summary}")
        context.log.warning(decision.note)
    publication = _publication_metadata(decision, evaluated, run_id)
    # the decision shows on curated_set's own page as well (its materialization only said "staged")
    context.log_event(
        dg.AssetObservation(asset_key=curated_set.key, partition=spec.name, metadata=publication)
    )
    return dg.MaterializeResult(
        metadata={
            **report.numeric_metrics(UI_METRICS),
            **report.withheld_metrics(UI_METRICS),
            "dagster/row_count": 1,
            "snapshot_id": snapshot,  # also the snapshot that published the curated_set version
            "metrics": dg.MetadataValue.json(report.metrics),
            "report": dg.MetadataValue.md(written.ui_markdown),
            "report_path": dg.MetadataValue.path(str(written.path)),
            "latest_report_path": dg.MetadataValue.path(str(written.latest_path)),
            **{f"plot_{name}": dg.MetadataValue.path(str(path)) for name, path in written.plots.items()},
            "promoted": verdict.passed,
            "gate": verdict.summary,
            **publication,
            "curated_run_id": evaluated or "",
            "fell_back_to_last_good_curated_set": inputs.fell_back,
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes) or "_none_"),
            "baseline_run_id": baseline.run_id if baseline else "none",
            "seed_cv_method": report.metrics.get("seed_cv_method") or "not measured",
            "spec": spec.name,
        },
        check_results=[_gate_check(verdict, decision)],
        data_version=dg.DataVersion(report.data_version()),
    )
