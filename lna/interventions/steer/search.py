"""lna-steer --search GOAL: per method and layer group, the smallest strength at which at
least GOAL of the outputs are fluent in the target language, and the best share found.

Deterministic, no randomness and no dependence on timing: strengths climb a geometric
ladder (LADDER: 0.25, 0.5, ..., 64, doubling) until one reaches the goal; then STEPS
bisections between the last strength below it and the first at or above it, at geometric
midpoints rounded to 4 significant digits (the strength in a row's name). Bisection
assumes the share grows with strength up to that point; where it does not, the result is
still the smallest strength found reaching the goal among those tried, which are all
listed. The cost is read at the best strength (the highest share, the smaller strength on
ties): the steered model's perplexity of the source and target reference responses over
the unsteered model's (x 1.00: no change). Strengths already in the grid reuse its outputs;
the searches of all methods and layer groups advance together, one batch of rows a round.
"""
import hashlib
import math

from lna.interventions.steer import table

FOLDER = "search"  # DIR/search/: the NLLs of each round's rows, for resuming
LADDER = tuple(0.25 * 2 ** k for k in range(9))  # 0.25 .. 64
STEPS = 3


def _round(x: float) -> float:
    return float(f"{x:.4g}")


class _Series:
    """One method and layer group's search: which strength to try next, and what was found."""

    def __init__(self, method, group, layers):
        self.method, self.group, self.layers = method, group, layers
        self.tried, self.below, self.reached, self.rung, self.steps = {}, None, None, 0, 0

    def next(self):
        if self.reached is None:  # climbing the ladder
            return LADDER[self.rung] if self.rung < len(LADDER) else None
        if self.below is None or self.steps >= STEPS:
            return None
        mid = _round(math.sqrt(self.below * self.reached))
        return None if mid in (self.below, self.reached) else mid

    def record(self, strength, reached: bool) -> None:
        if self.reached is None:
            self.rung += 1
        else:
            self.steps += 1
        if reached:
            self.reached = strength
        else:
            self.below = strength


def run(session, planner, chosen, grid: dict, rows: list, max_ppl: float, goal: float) -> list:
    """The searches of every method and layer group, in lockstep: each round measures the
    next strength of every unfinished search in one batch of rows (fewer, fuller runner
    calls; which strengths are tried does not depend on it)."""
    src, tgt, keys, refs = session.opts.source, session.opts.target, session.keys, session.refs
    in_grid = {row.name: r for r, row in enumerate(rows)}
    base = table.summarize(rows[0], keys, session, grid["nll"]["refs"][0], grid["nll"]["outputs"][0], refs, src, tgt)
    series = [_Series(method, group, layers) for method in chosen for group, layers in planner.groups]
    while True:
        todo = [(one, one.next()) for one in series]
        todo = [(one, strength) for one, strength in todo if strength is not None]
        if not todo:
            break
        wanted = [(one, strength, planner.row(one.method, one.group, one.layers, strength)) for one, strength in todo]
        new = [row for _, _, row in wanted if row.name not in in_grid]
        got = {}
        if new:
            names = "\n".join(row.name for row in new)
            state = session.out / FOLDER / (hashlib.sha256(names.encode()).hexdigest()[:16] + ".npz")
            measured = session.measure(new, state)
            session.judge(new, measured, max_ppl)
            got = {row.name: (measured["nll"]["refs"][r], measured["nll"]["outputs"][r]) for r, row in enumerate(new)}
        for one, strength, row in wanted:
            if row.name in in_grid:
                r = in_grid[row.name]
                got[row.name] = (grid["nll"]["refs"][r], grid["nll"]["outputs"][r])
            one.tried[strength] = table.summarize(row, keys, session, *got[row.name], refs, src, tgt)
            one.record(strength, one.tried[strength]["share_fluent_target"] >= goal)
    return [_record(one.method, one.group, one.layers, goal, one.reached, one.tried, base) for one in series]


def _record(method, group, layers, goal, reached, tried: dict, base: dict) -> dict:
    best = min(tried, key=lambda s: (-tried[s]["share_fluent_target"], s))
    at = tried[best]

    def ratio(key):
        return at[key] / base[key] if at[key] is not None and base[key] else None

    return {"method": method, "layers": group, "layer_list": list(layers), "goal": goal, "strength": reached,
            "share": None if reached is None else tried[reached]["share_fluent_target"],
            "best_strength": best, "best_share": at["share_fluent_target"],
            "ppl_source_ratio": ratio("ppl_source"), "ppl_target_ratio": ratio("ppl_target"),
            "tried": [[s, tried[s]["share_fluent_target"]] for s in sorted(tried)],
            "rows": [tried[s] for s in sorted(tried)]}
