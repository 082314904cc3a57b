"""Great Expectations: a file-backed context (the lakehouse's reports folder, or a local copy of it) runs a suite
through a checkpoint that rebuilds the Data Docs, which are then made to render offline
(:mod:`jobs.platform.reports.offline`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jobs.platform import lease, storage
from jobs.platform.config import Settings
from jobs.platform.reports.offline import make_offline
from jobs.validation.suites import RuleOutcome, Suite, SuiteOutcome

DOCS_INDEX = Path("gx") / "uncommitted" / "data_docs" / "local_site" / "index.html"
OVERVIEW = Path("index.html")  # the validation overview (jobs.validation.overview), next to the GX project


def published_root(settings: Settings):
    """Where readers find the GX project, its Data Docs and the overview: ``<lakehouse>/reports/validation``."""
    return settings.reports_dir / "validation"


@contextlib.contextmanager
def gx_project(settings: Settings):
    """Hold the lakehouse's GX project exclusively and yield it as a local folder.

    GX's file context needs a local folder. For a local lakehouse that is the published folder itself; for one on
    object storage, the project is fetched into a private local folder and published back (Data Docs included)
    when the block succeeds, so a failed validation publishes nothing. One process at a time, on any host, holds
    the project (:mod:`jobs.platform.lease`: a DynamoDB lease for an object-store lakehouse on the DynamoDB log
    store, else an OS file lock), so the next holder fetches what the last one published: no result, Data Docs
    page or overview row is lost to another host's upload.
    """
    published = published_root(settings)
    remote = storage.is_remote(published)
    digest = hashlib.blake2b(str(published).encode(), digest_size=6).hexdigest()
    root = Path(tempfile.gettempdir()) / f"taxi-gx-{os.getuid()}-{digest}" if remote else published
    root.mkdir(parents=True, exist_ok=True)
    with lease.held(settings, "reports/validation", root / ".gx.lock") as hold:
        if remote:
            for stale in root.iterdir():
                if stale.name != ".gx.lock":
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            storage.fetch_tree(published, root)
        yield root
        if remote:
            hold.check()
            storage.publish_tree(root, published)


def month_rule(max_failed_share: float) -> dict[str, Any]:
    """The row suite's month rule as an expectation: at most this share of rows fails any row rule."""
    return {
        "type": "expect_column_mean_to_be_between",
        "kwargs": {"column": "row_failed", "min_value": 0, "max_value": max_failed_share},
        "meta": {"rule": "month_failed_share", "reason": f"over {max_failed_share:.0%} of rows fail the row rules"},
    }


class GxRunner:
    """A file-backed GX context in a local project folder (:func:`gx_project`): suites, results history, Data Docs."""

    def __init__(self, settings: Settings, root: Path):
        import great_expectations as gx

        self.settings = settings
        self.root = root
        self.gx = gx
        self.context = gx.get_context(mode="file", project_root_dir=str(self.root))
        bars = self.context.variables.progress_bars
        if (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is not False:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # Batch jobs log their own progress; GX's terminal bars only clutter the logs.
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.context.variables.save()
        self.datasource = self.context.data_sources.add_or_update_spark(name="spark")

    @property
    def overview_page(self) -> Path:
        return self.root / OVERVIEW

    @property
    def docs_index(self) -> Path:
        return self.root / DOCS_INDEX

    def _batch_definition(self, asset_name: str):
        assets = {a.name: a for a in self.datasource.assets}
        asset = assets.get(asset_name) or self.datasource.add_dataframe_asset(name=asset_name)
        defs = {b.name: b for b in asset.batch_definitions}
        return defs.get("whole_month") or asset.add_batch_definition_whole_dataframe("whole_month")

    def run(
        self,
        suite: Suite,
        df,
        params: dict[str, Any],
        run_name: str,
        skip_types: tuple[str, ...] = (),
        max_failed_share: float | None = None,
    ):
        """Run the suite on ``df`` through a checkpoint that rebuilds the Data Docs.

        With ``max_failed_share`` (the row suite), the month rule is part of the suite, so GX's status is the
        pipeline's verdict: each row rule holds for ``1 - max_failed_share`` of the rows (``mostly``; its failing
        rows are still counted and quarantined), and ``month_failed_share`` bounds the share of rows failing any
        rule (``df`` carries ``row_failed``, 1 for such a row).
        """
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        gx = self.gx
        # A column-level rule on a column the file lacks cannot run: `columns_present` reports that column.
        expectations = [
            e
            for e in suite.expectations
            if e["type"] not in skip_types and e["kwargs"].get("column", df.columns[0]) in df.columns
        ]
        if max_failed_share is not None:
            expectations = [{**e, "kwargs": {**e["kwargs"], "mostly": 1 - max_failed_share}} for e in expectations]
            expectations.append(month_rule(max_failed_share))
        gx_suite = gx.ExpectationSuite(
            name=suite.name,
            expectations=[
                ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e["meta"]).to_domain_obj()
                for e in expectations
            ],
            meta={"version": suite.version},
        )
        gx_suite = self.context.suites.add_or_update(gx_suite)
        vd = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=self._batch_definition(suite.name), suite=gx_suite)
        )
        checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=suite.name,
                validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={
                    "result_format": self.settings.validation.result_format,
                    "partial_unexpected_count": self.settings.validation.partial_unexpected_count,
                },
            )
        )
        result = checkpoint.run(
            batch_parameters={"dataframe": df},
            expectation_parameters=params,
            run_id=gx.RunIdentifier(run_name=run_name),
        )
        make_offline(self.docs_index.parent)  # GX just rebuilt pages that load from CDNs
        outcome = SuiteOutcome(suite)
        by_rule = {e["meta"]["rule"]: e for e in expectations}
        for vr in result.run_results.values():
            for r in vr.results:
                rule = r.expectation_config.meta["rule"]
                exc = r.exception_info or {}
                if exc.get("raised_exception"):
                    raise RuntimeError(f"GX could not evaluate rule {rule}: {exc.get('exception_message')}")
                outcome.rules.append(
                    RuleOutcome(
                        rule,
                        bool(r.success),
                        r.result.get("unexpected_count"),
                        by_rule[rule]["meta"]["reason"],
                        r.result.get("observed_value"),
                    )
                )
        return outcome
