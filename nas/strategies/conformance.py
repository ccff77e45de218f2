"""The conformance suite every strategy passes (run by tests/nas/test_strategies.py for each registered one,
and usable on a strategy of one's own): it asks only for valid architectures that pass its screen, a seeded
run repeats, and a run resumed by `replay` after an interruption gives the same trace as one never stopped.

`factory(seed)` makes a fresh strategy; `evaluate(genes)` gives the metric columns of gene rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nas.strategies.base import Columns, Strategy

Factory = Callable[[int], Strategy]
Evaluate = Callable[[np.ndarray], Columns]


def run(strategy: Strategy, evaluate: Evaluate, batches: list[int]) -> list[tuple[np.ndarray, Columns]]:
    """Ask, evaluate and tell one batch per entry of `batches` (its size); the trace."""
    trace = []
    for size in batches:
        genes = strategy.ask(size)
        columns = evaluate(genes)
        strategy.tell(genes, columns)
        trace.append((genes, columns))
    return trace


def check_valid_architectures(factory: Factory, evaluate: Evaluate, batches: list[int]) -> None:
    strategy = factory(0)
    space = strategy.space
    for genes, _ in run(strategy, evaluate, batches):
        assert genes.dtype.kind == "i" and genes.shape[1] == len(space.genes), genes.shape
        assert np.array_equal(genes, space.canonical_genes(genes)), f"{strategy.name} asked for non-canonical genes"
        for row in genes:
            space.validate(space.from_genes(row))  # raises naming the field outside the space
        if strategy.screen is not None:
            assert np.asarray(strategy.screen(genes)).all(), f"{strategy.name} asked for rows its screen rejects"


def check_seeded_runs_repeat(factory: Factory, evaluate: Evaluate, batches: list[int]) -> None:
    first, second = run(factory(7), evaluate, batches), run(factory(7), evaluate, batches)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, second, strict=True)), "same seed, other trace"
    other = run(factory(8), evaluate, batches)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, other, strict=True)), \
        "the seed changes nothing"


def check_resume_gives_the_same_trace(factory: Factory, evaluate: Evaluate, batches: list[int],
                                      interrupted_after: int) -> None:
    whole = run(factory(3), evaluate, batches)
    resumed = factory(3)
    assert resumed.replay(whole[:interrupted_after]) == sum(batches[:interrupted_after])
    rest = run(resumed, evaluate, batches[interrupted_after:])
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(whole[interrupted_after:], rest, strict=True)), \
        f"{resumed.name}: the resumed run asks for other architectures than the uninterrupted one"


def check_strategy(factory: Factory, evaluate: Evaluate, batches: list[int] | None = None) -> None:
    """All of the suite. `batches` should reach past the strategy's warm-up (e.g. its population)."""
    batches = batches or [8] * 12
    check_valid_architectures(factory, evaluate, batches)
    check_seeded_runs_repeat(factory, evaluate, batches)
    check_resume_gives_the_same_trace(factory, evaluate, batches, interrupted_after=len(batches) // 2 + 1)
