"""`cxrctx info`: the temporal-hallucination rate of a build-priors folder's reports."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.io import open_stage
from cxrctx.release.info import info
from cxrctx.vocab import has_temporal_reference

runner = CliRunner()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    base = tmp_path_factory.mktemp("info")
    synthesize(base / "root", patients=12, seed=2)
    build_priors(base / "root", base / "records", workers=1)
    return base / "records"


def _expected(rec: pl.DataFrame) -> tuple[int, int]:
    """Recomputed from the report text, independently of the record flag."""
    none = rec.filter(pl.col("n_prior_studies") == 0)
    hits = sum(
        has_temporal_reference(f, i)
        for f, i in zip(none["findings"], none["impression"], strict=True)
    )
    return none.height, hits


def test_rate_matches_the_text_of_records_without_a_prior(records):
    rec = open_stage(records, "build-priors").read()
    n, hits = _expected(rec)
    assert n > 0 and 0 < hits < n  # the sample has both kinds, so the rate can be wrong
    th = info(records).temporal_hallucination
    assert th["all"] == {"without_prior": n, "with_comparison": hits, "rate": hits / n}
    split_sum = sum(v["without_prior"] for k, v in th.items() if k != "all")
    assert split_sum == n


def test_records_with_a_prior_do_not_count(records, tmp_path):
    """Comparison language after a prior study is not a hallucination: flip every record
    to have a prior and the rate has nothing to count."""
    from cxrctx.release import tables as T
    from cxrctx.release.info import temporal_summary

    rec = open_stage(records, "build-priors").read()
    studies = T.public_studies(rec).with_columns(pl.lit(1).alias("n_prior_studies"))
    assert temporal_summary(studies)["all"] == {
        "without_prior": 0,
        "with_comparison": 0,
        "rate": None,
    }


def test_cli_shows_the_rate_and_json_holds_it(records):
    rec = open_stage(records, "build-priors").read()
    n, hits = _expected(rec)
    r = runner.invoke(app, ["info", str(records), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["temporal_hallucination"]["all"]["with_comparison"] == hits
    r = runner.invoke(app, ["info", str(records)])
    assert r.exit_code == 0, r.output
    assert f"all {hits}/{n} ({100 * hits / n:.1f}%)" in " ".join(r.output.split())
