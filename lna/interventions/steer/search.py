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
the unsteered model's (x 1.00: no change). Strengths already in the grid reuse its outputs.
"""
import hashlib
import math

from lna.interventions.steer import table

LADDER = tuple(0.25 * 2 ** k for k in range(9))  # 0.25 .. 64
STEPS = 3


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def run(session, planner, chosen, grid: dict, rows: list, max_ppl: float, goal: float) -> list:
    from lna.interventions.steer.run import SEARCH

    src, tgt, keys, refs = session.opts.source, session.opts.target, session.keys, session.refs
    in_grid = {row.name: r for r, row in enumerate(rows)}
    base = table.summarize(rows[0], keys, session, grid["nll"]["refs"][0], grid["nll"]["outputs"][0], refs, src, tgt)
    found = []
    for method in chosen:
        for group, layers in planner.groups:
            tried = {}

            def measure(strength):
                row = planner.row(method, group, layers, strength)
                if row.name in in_grid:
                    r = in_grid[row.name]
                    nll_refs, nll_outputs = grid["nll"]["refs"][r], grid["nll"]["outputs"][r]
                else:
                    state = session.out / SEARCH / (hashlib.sha256(row.name.encode()).hexdigest()[:16] + ".npz")
                    got = session.measure([row], state)
                    session.judge([row], got, max_ppl)
                    nll_refs, nll_outputs = got["nll"]["refs"][0], got["nll"]["outputs"][0]
                tried[strength] = table.summarize(row, keys, session, nll_refs, nll_outputs, refs, src, tgt)
                return tried[strength]["share_fluent_target"] >= goal

            below = reached = None
            for strength in LADDER:
                if measure(strength):
                    reached = strength
                    break
                below = strength
            if reached is not None and below is not None:
                for _ in range(STEPS):
                    mid = _round(math.sqrt(below * reached))
                    if mid in (below, reached):
                        break
                    if measure(mid):
                        reached = mid
                    else:
                        below = mid
            found.append(_record(method, group, layers, goal, reached, tried, base))
    return found


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
