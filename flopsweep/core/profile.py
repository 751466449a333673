"""The rows of a module table, as pure arithmetic: the names of the whole model and of the optimizer step, a module's
parent and ancestors, and the modules of each depth with what ran in shallower ones (:func:`by_depth`)."""

from __future__ import annotations

from typing import Any

ROOT = "(model)"          # the whole model: work done outside every named module
OPTIMIZER = "(optimizer)"  # the optimizer step, its own row
REST = "(rest)"           # by_depth: the work done directly in shallower modules
OWN = "(own)"             # leaves: a module's own work, not done in a child (attention's QKᵀ, softmax and PV)


def parent(path: str) -> str:
    return path.rpartition(".")[0] or ROOT


def ancestors(path: str) -> list[str]:
    """``path`` and every module above it, the model (:data:`ROOT`) included."""
    if path == ROOT:
        return [ROOT]
    parts = path.split(".")
    return [ROOT] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _exclusive(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Each module's own share of ``key``: its value less its children's."""
    by_name = {row["module"]: row for row in rows}
    own = {name: row[key] or 0 for name, row in by_name.items()}
    for row in rows:
        if row["depth"] > 0:
            own[parent(row["module"])] -= row[key] or 0
    return own


def leaves(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The modules with no recorded children, and for each module with children its own part (its value less
    its children's, on each of ``keys``) as ``"<module> (own)"`` where any of it is not zero: together they
    are the model, each key adding up to the model's total. The optimizer's row is not a module (depth 0)."""
    parents = {parent(row["module"]) for row in rows if row["depth"] > 0}
    own = {key: _exclusive(rows, key) for key in keys}
    out = []
    for row in rows:
        name = row["module"]
        if name not in parents:
            if row["depth"] > 0:
                out.append(dict(row))
        elif any(own[key][name] for key in keys):
            out.append({**row, "module": f"{name} {OWN}", **{key: own[key][name] for key in keys}})
    return out


SUMMED = ("params", "macs", "forward_flops", "backward_flops", "forward_latency_s")


def by_depth(rows: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """For each depth: its ``top`` modules by forward FLOPs (then latency), every module of that depth summed
    as ``(depth d, all)``, and :data:`REST`, what ran directly in shallower modules; ``all`` + ``rest`` is the
    model's total for each column."""
    timed = rows[0]["forward_latency_s"] is not None
    own = {key: _exclusive(rows, key) for key in SUMMED if timed or key != "forward_latency_s"}
    depth_of = {row["module"]: row["depth"] for row in rows}
    out = []
    for depth in range(1, max(depth_of.values()) + 1):
        level = [row for row in rows if row["depth"] == depth]
        ranked = sorted(level, key=lambda r: (-r["forward_flops"], -(r["forward_latency_s"] or 0)))[:top]
        for rank, row in enumerate(ranked, 1):
            out.append({"depth": depth, "rank": rank, **{k: row[k] for k in ("module", "type", *SUMMED)}})
        total = {key: sum(row[key] or 0 for row in level) for key in own}
        rest = {key: sum(v for name, v in values.items() if depth_of[name] < depth) for key, values in own.items()}
        out.append({"depth": depth, "rank": None, "module": f"(depth {depth}, all {len(level)})", "type": "",
                    **{k: total.get(k) for k in SUMMED}})
        out.append({"depth": depth, "rank": None, "module": REST, "type": "", **{k: rest.get(k) for k in SUMMED}})
    return out
