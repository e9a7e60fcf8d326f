"""The console's server-drawn SVG charts: every text escaped, an empty window said in words, a
bar as long as its value, and a day's series stacked in one column."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from revsync.console import charts

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script> & "quoted" \'reason\''


def parsed(drawn: Markup) -> ET.Element:
    """The chart as an XML tree: fails on anything not well-formed, an unescaped ``<`` say."""
    return ET.fromstring(str(drawn))  # noqa: S314 - our own output, parsed to check it


def rects(svg: ET.Element) -> list[ET.Element]:
    """A column chart's segments: every rect with a title (the legend's swatches have none)."""
    return [rect for rect in svg.iter(f"{SVG}rect") if rect.find(f"{SVG}title") is not None]


def test_bars_escape_a_hostile_reason_in_its_label_and_title() -> None:
    drawn = charts.bars(HOSTILE, {HOSTILE: 3.0, "PRICING_MISMATCH": 1.0})

    assert "<script>" not in drawn
    svg = parsed(drawn)
    assert svg.get("aria-label") == HOSTILE
    titles = [title.text for title in svg.iter(f"{SVG}title")]
    assert titles == [HOSTILE, f"{HOSTILE}: 3", "PRICING_MISMATCH: 1"]
    labels = [text.text for text in svg.iter(f"{SVG}text") if text.get("class") == "label"]
    assert labels == [HOSTILE[:21] + "…", "PRICING_MISMATCH"]


def test_columns_escape_hostile_series_and_bucket_names() -> None:
    drawn = charts.columns(HOSTILE, [HOSTILE], {HOSTILE: [2.0]})

    assert "<script>" not in drawn
    svg = parsed(drawn)
    (segment,) = rects(svg)
    title = segment.find(f"{SVG}title")
    assert title is not None
    assert title.text == f"{HOSTILE} · {HOSTILE}: 2"
    texts = [text.text for text in svg.iter(f"{SVG}text")]
    assert HOSTILE in texts
    assert HOSTILE[:21] + "…" in texts


@pytest.mark.parametrize(
    "drawn",
    [
        charts.bars("Exceptions by region", {}),
        charts.columns("Orders per day", [], {"accepted": []}),
        charts.columns("Orders per day", ["2026-03-01", "2026-03-02"], {}),
        charts.columns("Orders per day", ["2026-03-01"], {"accepted": [0.0], "rejected": [0.0]}),
    ],
    ids=["no bars", "no days", "no series", "only zeros"],
)
def test_nothing_to_draw_says_so_in_a_paragraph(drawn: Markup) -> None:
    assert "<svg" not in drawn
    paragraph = parsed(drawn)
    assert paragraph.tag == "p"
    assert paragraph.get("class") == "empty"
    assert paragraph.text == "Nothing in this window."


def test_the_empty_paragraph_escapes_its_title() -> None:
    paragraph = parsed(charts.bars(HOSTILE, {}))

    assert paragraph.get("aria-label") == HOSTILE


def test_a_bars_length_is_proportional_to_its_value() -> None:
    values = {"0-1 h": 8.0, "1-4 h": 4.0, "4-24 h": 2.0, "over a day": 0.0}

    groups = list(parsed(charts.bars("Orders waiting", values)).iter(f"{SVG}g"))

    assert [group.findtext(f"{SVG}title") for group in groups] == [
        "0-1 h: 8",
        "1-4 h: 4",
        "4-24 h: 2",
        "over a day: 0",
    ]
    bars = [group.find(f"{SVG}rect") for group in groups]
    widths = [float(bar.get("width", "nan")) for bar in bars if bar is not None]
    longest = widths[0]
    assert longest > 0
    assert widths == pytest.approx([longest * value / 8.0 for value in values.values()], abs=0.1)
    assert len({bar.get("x") for bar in bars if bar is not None}) == 1


def test_columns_stack_each_days_series_one_on_another() -> None:
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    series = {"accepted": [3.0, 1.0, 0.0], "rejected": [1.0, 0.0, 2.0]}

    svg = parsed(charts.columns("Orders per day", days, series))

    segments = rects(svg)
    assert [segment.findtext(f"{SVG}title") for segment in segments] == [
        "2026-03-01 · accepted: 3",
        "2026-03-01 · rejected: 1",
        "2026-03-02 · accepted: 1",
        "2026-03-03 · rejected: 2",
    ]
    geometry = [
        {name: float(segment.get(name, "nan")) for name in ("x", "y", "width", "height")}
        for segment in segments
    ]
    first_accepted, first_rejected, second_accepted, third_rejected = geometry
    # One day, one column: the same x, the second series right on top of the first.
    assert first_rejected["x"] == first_accepted["x"]
    assert first_rejected["y"] + first_rejected["height"] == pytest.approx(
        first_accepted["y"], abs=0.1
    )
    # Heights in proportion to the values; the tallest column (4) fills the plot.
    unit = first_rejected["height"]
    assert first_accepted["height"] == pytest.approx(3 * unit, abs=0.2)
    assert second_accepted["height"] == pytest.approx(unit, abs=0.2)
    assert third_rejected["height"] == pytest.approx(2 * unit, abs=0.2)
    # Every column stands on the same baseline, left to right by day.
    baseline = first_accepted["y"] + first_accepted["height"]
    for standing in (second_accepted, third_rejected):
        assert standing["y"] + standing["height"] == pytest.approx(baseline, abs=0.1)
    assert first_accepted["x"] < second_accepted["x"] < third_rejected["x"]
    # Each series its own colour, named in the legend; days shown without their year.
    assert segments[0].get("fill") != segments[1].get("fill")
    texts = [text.text for text in svg.iter(f"{SVG}text")]
    assert {"accepted", "rejected", "03-01", "03-02", "03-03", "4"} <= set(texts)
