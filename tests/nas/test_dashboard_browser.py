"""optuna-dashboard as a user sees it: a study written by `nas.study` opened in headless Chromium shows the
objectives by name, the trials, and which trials break a constraint (read from the rendered page, after its
data has loaded; the JSON API is tested in test_study.py)."""

import re

import pytest

from nas.objectives import parse_constraints, parse_objectives
from nas.strategies import get_strategy
from nas.strategies.conformance import run
from nas.study import dashboard_thread, open_study, record
from search_spaces import get_space
from tests.browser import browser_missing, chromium_page, screenshot_is_blank
from tests.nas.test_strategies import evaluate

SPACE = get_space("small")
OBJECTIVES = parse_objectives(["accuracy", "latency_ms"])
CONSTRAINTS = parse_constraints(["latency_ms<=0.2"])
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


def small_study(storage):
    """Six trials of two objectives, some breaking the latency limit; their metric columns."""
    study = open_study(storage, "look", OBJECTIVES, SPACE)
    ((genes, columns),) = run(get_strategy("evolution", SPACE, OBJECTIVES, CONSTRAINTS, seed=1, population=6),
                              evaluate, [6])
    record(study, SPACE, genes, columns, OBJECTIVES, CONSTRAINTS, strategy="evolution", seed=1, batch=0,
           latency_table="small-ort-fp32")
    return columns


def test_the_dashboard_page_shows_named_objectives_trials_and_feasibility(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    columns = small_study(storage)
    infeasible = int((columns["latency_ms"] > 0.2).sum())
    assert 0 < infeasible < 6  # the page has both kinds to tell apart

    with dashboard_thread(storage) as url, chromium_page() as page:
        page.goto(url)  # the dashboard's list of studies, as `hwnas dashboard` prints it
        page.get_by_text("look", exact=False).first.click(timeout=WAIT_MS)
        page.wait_for_url(re.compile(r".*/dashboard/studies/\d+$"), timeout=WAIT_MS)
        # the objective selectors of the Pareto front are filled once the study's data has arrived
        page.get_by_text("latency_ms", exact=True).first.wait_for(timeout=WAIT_MS)
        page.get_by_text("Infeasible", exact=True).first.wait_for(timeout=WAIT_MS)  # the timeline's legend
        text = page.inner_text("body")
        assert "accuracy" in text and "latency_ms" in text and "Objective 0" not in text
        assert not screenshot_is_blank(page.screenshot(full_page=True))

        page.goto(page.url + "/trials")
        page.get_by_text("Trial 5", exact=True).first.wait_for(timeout=WAIT_MS)
        text = page.inner_text("body")
        assert "6 Trials" in text and "Trial 6" not in text
        assert re.search(r"feasible\s+(True|False)", text) and "latency_table small-ort-fp32" in text
