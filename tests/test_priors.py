"""Prior join rules, StudyTime parsing and image ordering."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest
from mimic_tiny import study, write_root

from cxrctx.io import read_shards
from cxrctx.mimic.build import build_priors
from cxrctx.mimic.images import _parse_datetimes
from cxrctx.mimic.priors import join_priors


def _timeline(rows):
    """rows: (subject, study, 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD' for no time)."""
    data = []
    for subj, sid, when in rows:
        timed = len(when) > 10
        dt = datetime.fromisoformat(when) if timed else datetime.fromisoformat(when + " 00:00:00")
        data.append((subj, sid, dt, dt.date(), timed))
    return pl.DataFrame(
        data,
        schema={
            "subject_id": pl.Int64,
            "study_id": pl.Int64,
            "study_datetime": pl.Datetime("us"),
            "date": pl.Date,
            "time_known": pl.Boolean,
        },
        orient="row",
    )


def _priors(tl, k=3):
    pairs, stats = join_priors(tl, k)
    by = {}
    for sid, p, _rank, days in pairs.sort("study_id", "rank").iter_rows():
        by.setdefault(sid, []).append((p, days))
    st = {r["study_id"]: r for r in stats.iter_rows(named=True)}
    return by, st


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("80556.875", "08:05:56.875000"),
        ("235959", "23:59:59.000000"),
        ("5", "00:00:05.000000"),
        ("120000.5", "12:00:00.500000"),
        ("000001.123456789", "00:00:01.123456"),
        ("  93000.0 ", "09:30:00.000000"),
    ],
)
def test_study_time_left_padded(raw, expected):
    df = pl.DataFrame({"StudyDate": ["21500131"], "StudyTime": [raw]})
    out = _parse_datetimes(df)
    assert out["time_known"][0] is True
    assert out["dt"][0].strftime("%H:%M:%S.%f") == expected
    assert out["dt"][0].date() == date(2150, 1, 31)


@pytest.mark.parametrize(
    ("d", "t", "bad_date", "bad_time", "known"),
    [
        ("21500131", None, False, False, False),
        ("21500131", "", False, False, False),
        ("21501341", "80556", True, False, True),
        ("2150-01-31", "80556", True, False, True),
        ("21500131", "250000", False, True, False),
        ("21500131", "12:00", False, True, False),
        ("21500131", "abc", False, True, False),
    ],
)
def test_bad_and_missing_dates_and_times(d, t, bad_date, bad_time, known):
    out = _parse_datetimes(
        pl.DataFrame(
            {"StudyDate": [d], "StudyTime": [t]},
            schema={"StudyDate": pl.String, "StudyTime": pl.String},
        )
    )
    assert out["bad_date"][0] is bad_date
    assert out["bad_time"][0] is bad_time
    assert out["time_known"][0] is known


def test_strictly_earlier_k_most_recent_first():
    tl = _timeline(
        [
            (1, 11, "2150-01-01 08:00:00"),
            (1, 12, "2150-01-05 09:00:00"),
            (1, 13, "2150-02-01 10:00:00"),
            (1, 14, "2150-03-01 11:00:00"),
            (1, 15, "2150-03-02 07:00:00"),
            (2, 21, "2150-01-01 08:00:00"),  # another patient is never a prior
        ]
    )
    by, st = _priors(tl, k=3)
    assert by[15] == [(14, 1), (13, 29), (12, 56)]
    assert st[15]["n_prior_studies"] == 4  # all earlier ones, not just K
    assert 11 not in by  # the first study has no prior
    assert st[11]["n_prior_studies"] == 0
    assert 21 not in by and 21 not in st  # no pair at all: the builder fills 0 / False


def test_same_datetime_never_priors_and_flagged():
    tl = _timeline(
        [
            (1, 11, "2150-01-01 08:00:00"),
            (1, 12, "2150-01-01 08:00:00"),
            (1, 13, "2150-01-01 09:00:00"),
        ]
    )
    by, st = _priors(tl)
    assert 11 not in by and 12 not in by
    assert st[11]["same_time_ambiguous"] and st[12]["same_time_ambiguous"]
    assert not st[13]["same_time_ambiguous"]
    assert sorted(p for p, _ in by[13]) == [11, 12]
    assert all(days == 0 for _, days in by[13])


def test_missing_time_compares_by_date_and_same_day_unordered():
    tl = _timeline(
        [
            (1, 11, "2150-01-01 08:00:00"),
            (1, 12, "2150-01-02"),  # no time
            (1, 13, "2150-01-02 10:00:00"),  # same day as 12: not ordered
            (1, 14, "2150-01-03 10:00:00"),
        ]
    )
    by, st = _priors(tl)
    assert by[12] == [(11, 1)]
    assert by[13] == [(11, 1)]  # 12 is the same day without time: not a prior
    assert st[12]["same_day_unordered"] and st[13]["same_day_unordered"]
    assert not st[11]["same_day_unordered"] and not st[14]["same_day_unordered"]
    assert [p for p, _ in by[14]] == [13, 12, 11]
    assert st[14]["n_prior_studies"] == 3


def test_same_day_with_times_is_ordered():
    tl = _timeline([(1, 11, "2150-01-01 08:00:00"), (1, 12, "2150-01-01 20:00:00")])
    by, st = _priors(tl)
    assert by[12] == [(11, 0)]
    assert not st[12]["same_day_unordered"]


def test_days_before_is_calendar_days():
    # 23:59 → 00:01 next day is one calendar day, although only 2 minutes apart.
    tl = _timeline([(1, 11, "2150-01-01 23:59:00"), (1, 12, "2150-01-02 00:01:00")])
    by, _ = _priors(tl)
    assert by[12] == [(11, 1)]


def test_k_zero_embeds_nothing_but_counts():
    tl = _timeline([(1, 11, "2150-01-01 08:00:00"), (1, 12, "2150-01-02 08:00:00")])
    by, st = _priors(tl, k=0)
    assert by == {}
    assert st[12]["n_prior_studies"] == 1


def test_end_to_end_priors_embedding_and_image_order(tmp_path):
    studies = [
        study(
            10000001,
            50000003,
            date="21500301",
            time="93000",
            views=("LATERAL", "AP", "PA", "LAO", ""),
        ),
        study(10000001, 50000001, date="21500101", time="80556.875"),
        study(10000001, 50000002, date="21500201", time=""),
    ]
    root = write_root(tmp_path / "root", studies)
    build_priors(root, tmp_path / "out", max_priors=1, workers=1)
    df = read_shards(tmp_path / "out" / "records")
    assert df["study_id"].to_list() == [50000001, 50000002, 50000003]  # time order, not id order
    first = df.row(0, named=True)
    assert first["study_datetime"] == datetime(2150, 1, 1, 8, 5, 56, 875000)
    assert first["priors"] == [] and first["n_prior_studies"] == 0
    second = df.row(1, named=True)
    assert second["flags"] == ["missing_study_time"]
    assert second["study_datetime"] == datetime(2150, 2, 1)
    last = df.row(2, named=True)
    assert [i["view_position"] for i in last["images"]] == ["PA", "AP", "LATERAL", "LAO", None]
    assert [i["view_group"] for i in last["images"]] == [
        "frontal",
        "frontal",
        "lateral",
        "other",
        "other",
    ]
    assert last["n_prior_studies"] == 2
    (prior,) = last["priors"]
    assert prior["study_id"] == 50000002 and prior["days_before"] == 28
    assert prior["findings"] == second["findings"] and prior["images"] == second["images"]


def test_study_datetime_is_earliest_image(tmp_path):
    s = study(10000001, 50000001, date="21500101", time="120000")
    s2 = study(10000001, 50000001, date="21500101", time="90000", first_image=99)
    s["images"] = s["images"][:1]
    s2["images"] = s2["images"][:1]
    s2["report"] = None
    root = write_root(tmp_path / "root", [s, s2], labels=False)
    build_priors(root, tmp_path / "out", workers=1)
    df = read_shards(tmp_path / "out" / "records")
    assert df.height == 1
    assert df["study_datetime"][0] == datetime(2150, 1, 1, 9, 0)
    assert df["images"][0].len() == 2
