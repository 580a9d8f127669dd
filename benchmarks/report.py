"""The printed report: tables with ratios, the scaling sections and the targets of issue 3.

Standard library only (``benchmarks/run.py`` prints the report itself).
Input: one result per loop from ``bench_portal.measure`` and the memory
measurements from ``bench_memory`` by loop, column and task count; for
:func:`sqlalchemy_lines`, the result of ``bench_sqlalchemy.measure`` (issue
16's rows and targets, whose ratios are medians of same-round ratios).

Cells are medians over rounds with half the interquartile range after
``±``.  On an overhead row (``+``) every round's native baseline is
subtracted from the same round's sample before the median is taken.  The
ratio columns divide greenportal's median by the other column's median (of
overheads on overhead rows).  The targets are read off the same numbers;
they report, they never fail anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COLUMNS = ("native", "greenportal", "greenback", "sqlalchemy", "awaitlet", "floor")
HEADINGS = {
    "native": "native",
    "greenportal": "greenportal",
    "greenback": "greenback",
    "sqlalchemy": "SQLAlchemy",
    "awaitlet": "awaitlet",
    "floor": "floor",
}
RATIOS = (
    ("greenback", "÷gback"),
    ("sqlalchemy", "÷SQLA"),
    ("floor", "÷floor"),
    ("native", "÷native"),
)
MEMORY_SIZES = (10_000, 100_000)
LABEL_WIDTH = 44
CELL_WIDTH = 14
RATIO_WIDTH = 8

Memory = dict[str, dict[str, dict[int, dict[str, float]]]]  # loop -> column -> tasks -> values


@dataclass
class Row:
    key: str
    label: str
    # Subtract this row's native samples round by round (shown with '+').
    baseline: str | None = None
    # Row whose floor column this row shows.
    floor: str | None = None
    ratios: tuple[str, ...] = ("greenback", "sqlalchemy")


MAIN_ROWS = (
    Row("floor_switch", "greenlet switch pair (the floor)", ratios=()),
    Row("floor_greenlet", "new greenlet running an empty function", ratios=()),
    Row("checkpoint", "native checkpoint", floor="floor_switch", ratios=()),
    Row("floor_shim", "checkpoint in a minimal-shim task [5]", "checkpoint", ratios=()),
    Row(
        "step_ensure_portal",
        "checkpoint in a portal task: ensure_portal",
        "checkpoint",
        "floor_switch",
        ("greenback", "floor"),
    ),
    Row(
        "step_bestow_portal",
        "  ... bestow_portal",
        "checkpoint",
        "floor_switch",
        ("greenback", "floor"),
    ),
    Row(
        "step_with_portal_run",
        "  ... with_portal_run",
        "checkpoint",
        "floor_switch",
        ("greenback", "floor"),
    ),
    Row(
        "step_with_portal_run_tree",
        "  ... with_portal_run_tree",
        "checkpoint",
        "floor_switch",
        ("greenback", "floor"),
    ),
    Row(
        "await_checkpoint",
        "await_(checkpoint), task portal [1]",
        "checkpoint",
        "floor_switch",
        ("greenback", "sqlalchemy", "floor"),
    ),
    Row(
        "await_checkpoint_sync",
        "await_(checkpoint), per-call portal [2]",
        "checkpoint",
        "floor_switch",
        ("greenback", "sqlalchemy", "floor"),
    ),
    Row(
        "await_noyield",
        "await_(coroutine that never yields)",
        ratios=("greenback", "sqlalchemy", "native"),
    ),
    Row(
        "await_ten",
        "await_(ten-trap coroutine)",
        ratios=("greenback", "sqlalchemy", "native"),
    ),
    Row(
        "create_sync",
        "with_portal_run_sync(empty) [3]",
        floor="floor_greenlet",
        ratios=("greenback", "sqlalchemy", "floor"),
    ),
    Row(
        "create_async",
        "with_portal_run(empty async fn)",
        floor="floor_greenlet",
        ratios=("greenback", "floor"),
    ),
    Row("new_task", "new task taking a portal [4]", "new_task", ratios=("greenback",)),
)

MAIN_NOTES = """\
[1] greenportal, greenback: in a task given a portal by ensure_portal;
    SQLAlchemy: await_only inside greenlet_spawn; awaitlet: awaitlet inside async_def.
[2] inside with_portal_run_sync (SQLAlchemy, awaitlet: as [1]).
[3] SQLAlchemy: greenlet_spawn(empty); awaitlet: async_def(empty).
[4] native: a new task that checkpoints once; the others: a new task whose only
    statement is `await ensure_portal()` (itself a checkpoint), minus native.
[5] floor column: a task whose coroutine is stepped by benchmarks/_common.py's
    MinimalShim (one switch pair per step and nothing else): the in-loop floor.
greenback's tree portals (with_portal_run_tree) exist on Trio only."""


def _format_time(value: float, spread: float, sign: bool) -> str:
    text = f"{value * 1e6:+.2f}" if sign else f"{value * 1e6:.2f}"
    return f"{text} ±{spread * 1e6:.2f}"


class Timings:
    """Medians of one loop's samples, paired with baselines where asked."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self.samples: dict[str, dict[str, list[float]]] = result["samples"]

    def values(self, row: str, column: str, baseline: str | None = None) -> list[float] | None:
        got = self.samples.get(row, {}).get(column)
        if not got:
            return None
        if baseline is None or column == "native":
            return got
        base = self.samples.get(baseline, {}).get("native")
        if not base:
            return None
        return [a - b for a, b in zip(got, base, strict=False)]

    def median(self, row: str, column: str, baseline: str | None = None) -> float | None:
        values = self.values(row, column, baseline)
        return statistics.median(values) if values else None

    def cell(self, row: str, column: str, baseline: str | None = None) -> str:
        values = self.values(row, column, baseline)
        if not values:
            return "-"
        if len(values) >= 2:
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            q1 = q3 = values[0]
        sign = baseline is not None and column != "native"
        return _format_time(statistics.median(values), (q3 - q1) / 2, sign)


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    return f"{ours / theirs:.2f}"


def _line(label: str, cells: list[str], ratios: list[str]) -> str:
    text = f"{label:<{LABEL_WIDTH}}" + "".join(f" {c:>{CELL_WIDTH - 1}}" for c in cells)
    return text + "".join(f"{r:>{RATIO_WIDTH}}" for r in ratios)


def _header(first: str) -> list[str]:
    head = _line(first, [HEADINGS[c] for c in COLUMNS], [label for _, label in RATIOS])
    return [head, "-" * len(head)]


def main_table(timings: Timings) -> list[str]:
    lines = _header("time per operation, µs")
    for row in MAIN_ROWS:
        if row.key not in timings.samples:
            continue
        cells = []
        for column in COLUMNS:
            if column == "floor" and row.floor is not None:
                cells.append(timings.cell(row.floor, "floor"))
            elif column == "native" and row.baseline is not None:
                cells.append(timings.cell(row.baseline, "native"))
            else:
                cells.append(timings.cell(row.key, column, row.baseline))
        ours = timings.median(row.key, "greenportal", row.baseline)
        ratios = []
        for column, _ in RATIOS:
            if column not in row.ratios:
                ratios.append("")
            elif column == "floor":
                ratios.append(_ratio(ours, timings.median(row.floor or row.key, "floor")))
            elif column == "native":
                ratios.append(_ratio(ours, timings.median(row.key, "native")))
            else:
                ratios.append(_ratio(ours, timings.median(row.key, column, row.baseline)))
        lines.append(_line(row.label, cells, ratios))
    return lines


def _memory_value(memory: Memory, loop: str, column: str, tasks: int, key: str) -> float | None:
    got = memory.get(loop, {}).get(column, {}).get(tasks)
    return None if got is None or key not in got else got[key]


def memory_extra(memory: Memory, loop: str, column: str, tasks: int) -> float | None:
    """Bytes per suspended task above a native task (the floor: absolute)."""
    value = _memory_value(memory, loop, column, tasks, "per_task")
    if value is None or column in ("native", "floor"):
        return value
    native = _memory_value(memory, loop, "native", tasks, "per_task")
    return None if native is None else value - native


def memory_table(memory: Memory, loop: str) -> list[str]:
    if loop not in memory:
        return []
    lines = _header("memory, KB per task (B: bytes)")
    for tasks in MEMORY_SIZES:
        if not any(tasks in by_size for by_size in memory[loop].values()):
            continue
        cells, values = [], {}
        for column in COLUMNS:
            extra = memory_extra(memory, loop, column, tasks)
            values[column] = extra
            sign = "" if column in ("native", "floor") or extra is None else "+"
            cells.append("-" if extra is None else f"{sign}{extra / 1000:.2f}")
        ours = values["greenportal"]
        ratios = [_ratio(ours, values[c]) if c != "native" else "" for c, _ in RATIOS]
        lines.append(_line(f"suspended in await_, {tasks:,} tasks [5]", cells, ratios))
        for key, label in (
            ("held_after", f"  RSS kept once finished, {tasks:,} (B)"),
            ("growth", f"  growth per further batch, {tasks:,} (B)"),
        ):
            cells = []
            for column in COLUMNS:
                value = _memory_value(memory, loop, column, tasks, key)
                cells.append("-" if value is None else f"{value:.0f}")
            lines.append(_line(label, cells, []))
    lines.append(
        "[5] RSS delta per task in a fresh process, bridges minus native (native: absolute);\n"
        "    floor: a bare greenlet suspended in one Python frame, no event loop (absolute).\n"
        "    Growth: slope of the RSS after each of 4 batches, per task (see bench_memory.py)."
    )
    return lines


def scaling_tables(timings: Timings) -> list[str]:
    samples = timings.samples
    lines: list[str] = []
    sections: list[tuple[str, str, Callable[[str], str]]] = [
        (
            "depth",
            "await_(checkpoint) d sync frames deep [6]",
            lambda v: f"depth {v}",
        ),
        ("traps", "await_ of a coroutine of t traps", lambda v: f"{v} trap(s) per await_"),
        ("tasks", "per await_(checkpoint) step, c tasks [7]", lambda v: f"{int(v):,} tasks"),
    ]
    for prefix, title, describe in sections:
        keys = [k for k in samples if k.startswith(prefix + "_")]
        if not keys:
            continue
        keys.sort(key=lambda k: int(k.split("_")[1]))
        lines.append("")
        lines.extend(_header(f"{title}, µs"))
        for key in keys:
            cells = [timings.cell(key, c) for c in COLUMNS]
            ours = timings.median(key, "greenportal")
            ratios = [
                _ratio(ours, timings.median(key, c)) if c != "floor" else "" for c, _ in RATIOS
            ]
            lines.append(_line(describe(key.split("_")[1]), cells, ratios))
    if lines:
        lines.append(
            "[6] native: the checkpoint awaited through d coroutine frames.\n"
            "[7] every task waits at a start line, then takes its steps; time from the start\n"
            "    to the last task's end, divided by all steps (native: native checkpoints)."
        )
    return lines


# -- targets ------------------------------------------------------------------------


@dataclass
class Target:
    text: str
    value: float | None
    limit: float | None
    detail: str = ""
    strict: bool = False  # value must be below the limit, not at it
    info: bool = False  # a reference figure, not one of the targets

    def line(self) -> str:
        if self.info:
            shown = "-" if self.value is None else f"{self.value:.2f}"
            return f"  info  {self.text:<66}{shown:>7}  {self.detail}"
        if self.value is None or self.limit is None:
            verdict, shown = "n/a ", "-"
        else:
            ok = self.value < self.limit if self.strict else self.value <= self.limit
            verdict, shown = ("PASS" if ok else "MISS"), f"{self.value:.2f}"
        return f"  {verdict}  {self.text:<66}{shown:>7}  {self.detail}"


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e6:.2f} µs"


def targets(timings: Timings, memory: Memory, loop: str) -> list[Target]:
    t = timings.median
    floor = t("floor_switch", "floor")
    out: list[Target] = []
    ov_gp = t("await_checkpoint", "greenportal", "checkpoint")
    ov_gb = t("await_checkpoint", "greenback", "checkpoint")
    out.append(
        Target(
            "await_ overhead / switch-pair floor (<= 2)",
            _div(ov_gp, floor),
            2.0,
            f"overhead {_us(ov_gp)}, floor {_us(floor)}",
        )
    )
    out.append(
        Target(
            "await_ overhead / greenback's (<= 0.20)",
            _div(ov_gp, ov_gb),
            0.2,
            f"greenback's {_us(ov_gb)}",
        )
    )
    ten = t("await_ten", "greenportal")
    sa_ten = t("await_ten", "sqlalchemy")
    out.append(
        Target(
            "await_(ten-trap) / SQLAlchemy await_only (<= 1)",
            _div(ten, sa_ten),
            1.0,
            f"{_us(ten)} vs {_us(sa_ten)}" if sa_ten else "no SQLAlchemy column on this loop",
        )
    )
    native_ten = t("await_ten", "native")
    out.append(
        Target(
            "await_(ten-trap) / native await (<= 1.3)",
            _div(ten, native_ten),
            1.3,
            f"native {_us(native_ten)}",
        )
    )
    for key, how in (
        ("step_ensure_portal", "ensure_portal"),
        ("step_bestow_portal", "bestow_portal"),
        ("step_with_portal_run", "with_portal_run"),
        ("step_with_portal_run_tree", "with_portal_run_tree"),
    ):
        step = t(key, "greenportal", "checkpoint")
        out.append(
            Target(
                f"checkpoint step overhead ({how}) / floor (<= 1.5)",
                _div(step, floor),
                1.5,
                f"overhead {_us(step)}",
            )
        )
    shim = t("floor_shim", "floor", "checkpoint")
    if shim is not None:
        step = t("step_ensure_portal", "greenportal", "checkpoint")
        out.append(
            Target(
                "checkpoint step overhead (ensure_portal) / minimal shim's",
                _div(step, shim),
                None,
                f"minimal shim {_us(shim)} = {_div(shim, floor) or 0:.2f} x floor",
                info=True,
            )
        )
        out.append(
            Target(
                "await_ overhead / minimal shim's step overhead",
                _div(ov_gp, shim),
                None,
                "(await_ also drives a coroutine; the shim only steps one)",
                info=True,
            )
        )
    create = t("create_sync", "greenportal")
    out.append(
        Target(
            "with_portal_run_sync(empty) / greenback's (<= 0.125)",
            _div(create, t("create_sync", "greenback")),
            0.125,
            f"{_us(create)} vs {_us(t('create_sync', 'greenback'))}",
        )
    )
    sa_spawn = t("create_sync", "sqlalchemy")
    out.append(
        Target(
            "with_portal_run_sync(empty) / SA greenlet_spawn (< 1)",
            _div(create, sa_spawn),
            1.0,
            f"greenlet_spawn {_us(sa_spawn)}" if sa_spawn else "no SQLAlchemy column on this loop",
            strict=True,
        )
    )
    task_gp = t("new_task", "greenportal", "new_task")
    task_gb = t("new_task", "greenback", "new_task")
    out.append(
        Target(
            "new task's extra cost / greenback's (<= 0.20)",
            _div(task_gp, task_gb),
            0.2,
            f"{_us(task_gp)} vs {_us(task_gb)}",
        )
    )
    for tasks in MEMORY_SIZES:
        gp = memory_extra(memory, loop, "greenportal", tasks)
        gb = memory_extra(memory, loop, "greenback", tasks)
        fl = memory_extra(memory, loop, "floor", tasks)
        if gp is None:
            continue  # not measured in this run
        if gb is None or fl is None:
            out.append(Target(f"memory per suspended task, {tasks:,}", None, None))
            continue
        if fl > 0.7 * gb:
            limit, why = 1.1 * fl, f"1.1 x floor {fl / 1000:.2f} KB"
        else:
            limit, why = 0.7 * gb, f"0.7 x greenback's {gb / 1000:.2f} KB"
        out.append(
            Target(
                f"memory per suspended task, {tasks:,}: extra / limit (<= 1)",
                _div(gp, limit),
                1.0,
                f"{'-' if gp is None else f'{gp / 1000:.2f}'} KB; limit {why}",
            )
        )
        growth = _memory_value(memory, loop, "greenportal", tasks, "growth")
        native_growth = _memory_value(memory, loop, "native", tasks, "growth") or 0.0
        allowed = max(native_growth, 0.0) + 250.0
        out.append(
            Target(
                f"no growth, {tasks:,}: growth per batch / allowed (<= 1)",
                _div(growth, allowed),
                1.0,
                f"{'-' if growth is None else f'{growth:.0f}'} B/task; allowed: native's + 250 B",
            )
        )
    return out


def print_report(results: list[dict[str, Any]], memory: Memory) -> None:
    for line in report_lines(results, memory):
        print(line)


def report_lines(results: list[dict[str, Any]], memory: Memory) -> list[str]:
    lines: list[str] = []
    all_targets: list[tuple[str, list[Target]]] = []
    for result in results:
        loop = result["loop"]
        timings = Timings(result)
        machine = result["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        lines.append("")
        lines.append(
            f"=== {loop}: CPython {machine['python']}, greenlet {machine['greenlet']}, "
            f"{machine['cpus']} CPUs; {versions}"
        )
        lines.append(
            f"    checkpoint = {result['checkpoint']}; median ±IQR/2 of "
            f"{result['rounds']['main']} rounds (scaling: {result['rounds']['scaling']}), "
            f"n = {result['n']}"
        )
        for name, why in result["skipped"].items():
            lines.append(f"    {name}: '-' ({why})")
        for row, columns in result["failed"].items():
            for column, why in columns.items():
                lines.append(f"    {row}/{column} failed, shown as '-': {why}")
        lines.append("")
        lines.extend(main_table(timings))
        lines.append(MAIN_NOTES)
        mem = memory_table(memory, loop)
        if mem:
            lines.append("")
            lines.extend(mem)
        lines.extend(scaling_tables(timings))
        all_targets.append((loop, targets(timings, memory, loop)))
    lines.append("")
    lines.append("=== TARGETS (issue 3): greenportal's ratio against each target's reference")
    for loop, found in all_targets:
        lines.append(f"  -- {loop}")
        lines.extend(target.line() for target in found)
    return lines


# -- SQLAlchemy's asyncio ORM from sync code (bench_sqlalchemy.py, issue 16) ----------

SQLA_TARGET = 1.05
SQLA_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
SQLA_KINDS = (("query", "query"), ("lazy", "lazy load"))
SQLA_ROWS = (
    ("run_sync", "SQLAlchemy: await session.run_sync(fn)"),
    ("portal", "greenportal: with_portal_run_sync(fn) [a]"),
    ("await_", "greenportal: await_(...) in a portal [b]"),
    ("native", "native: await session.execute(...) [c]"),
)
SQLA_LABEL_WIDTH = 44
SQLA_CELL_WIDTH = 16
SQLA_RATIO_WIDTH = 13
SQLA_NOTES = """\
[a] the same sync fn as run_sync's, with session.sync_session, from sync code in a portal.
[b] query: await_(session.execute(stmt)); lazy load: await_(parent.awaitable_attrs.children).
[c] the same awaitables as [b] awaited in the task (each one greenlet_spawn of SQLAlchemy's).
    One sample: a batch of n statements through one call of the bridge (run_sync,
    with_portal_run_sync) or n awaits; the lazy loads expire parent.children first (untimed).
[d] CPU time of the event loop's thread over the same batches (time.thread_time): no
    aiosqlite worker thread, no server, no waits; the bridges' own cost, less noisy."""


def _spread(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / 2


def same_round_ratios(ours: list[float] | None, base: list[float] | None) -> list[float] | None:
    """Round by round ``ours / base``: the rounds of one run are paired by index."""
    if not ours or not base or len(ours) != len(base):
        return None
    return [a / b for a, b in zip(ours, base, strict=True) if b > 0] or None


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _sqla_cells(by_variant: dict[str, list[float]], variant: str) -> tuple[str, str]:
    """The time cell and the ÷run_sync cell of one variant in one column."""
    values = by_variant.get(variant)
    if not values:
        return "-", "-"
    cell = _format_time(_median(values), _spread(values), False)
    if variant == "run_sync":
        return cell, "1.00"
    ratios = same_round_ratios(values, by_variant.get("run_sync"))
    return cell, "-" if not ratios else f"{_median(ratios):.2f} ±{_spread(ratios):.2f}"


def _sqla_table(samples: dict[str, dict[str, list[float]]], heading: str) -> list[str]:
    head = f"{heading:<{SQLA_LABEL_WIDTH}}"
    for _, label in SQLA_KINDS:
        head += f"{label:>{SQLA_CELL_WIDTH}}{'÷run_sync':>{SQLA_RATIO_WIDTH}}"
    lines = [head, "-" * len(head)]
    for variant, label in SQLA_ROWS:
        line = f"{label:<{SQLA_LABEL_WIDTH}}"
        for kind, _ in SQLA_KINDS:
            cell, ratio = _sqla_cells(samples.get(kind, {}), variant)
            line += f"{cell:>{SQLA_CELL_WIDTH}}{ratio:>{SQLA_RATIO_WIDTH}}"
        lines.append(line)
    return lines


def _sqla_target(
    samples: dict[str, dict[str, list[float]]], kind: str, text: str, info: bool = False
) -> Target:
    """greenportal's row over run_sync's in the column *kind*, as same-round ratios."""
    ours = samples.get(kind, {}).get("portal")
    base = samples.get(kind, {}).get("run_sync")
    ratios = same_round_ratios(ours, base)
    detail = "-"
    if ratios and ours and base:
        detail = f"±{_spread(ratios):.2f}; {_us(_median(ours))} vs {_us(_median(base))}"
    if not info:
        text += f" (<= {SQLA_TARGET:g})"
    return Target(text, _median(ratios) if ratios else None, SQLA_TARGET, detail, info=info)


def sqlalchemy_lines(result: dict[str, Any]) -> list[str]:
    """The section of bench_sqlalchemy.py's result, then its targets."""
    machine = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines = [
        "",
        f"=== SQLAlchemy's asyncio ORM from sync code (issue 16): {result['loop']}; "
        f"CPython {machine['python']}, greenlet {machine['greenlet']}, {machine['cpus']} CPUs; "
        f"{versions}",
        f"    µs per SQL statement, median ±IQR/2 of {result['rounds']} rounds; n = {result['n']} "
        f"statements per sample, {result['children']} rows each",
        "    ÷run_sync: median ±IQR/2 of the same-round ratios to the run_sync row of its column",
    ]
    found: list[Target] = []
    for db, why in result["skipped"].items():
        lines.append(f"    {SQLA_NAMES.get(db, db)}: skipped. {why}")
    for measured in result["databases"].values():
        title = measured["title"]
        counts = set(measured["statements"].values()) | set(measured["statements_after"].values())
        checked = (
            f"{counts.pop()} statements per batch in every variant (counted before and after)"
            if len(counts) == 1
            else f"statements per batch differ: {measured['statements']}"
        )
        lines.append("")
        lines.append(f"-- {title}: {checked}")
        for key, why in measured["failed"].items():
            lines.append(f"   {key} failed, shown as '-': {why}")
        for which, heading in (
            ("samples", "wall-clock per SQL statement, µs"),
            ("cpu_samples", "  loop-thread CPU per statement, µs [d]"),
        ):
            lines.extend(_sqla_table(measured.get(which, {}), heading))
        samples: dict[str, dict[str, list[float]]] = measured["samples"]
        short = title.split(" (")[0]
        for kind, what in (("query", "sync_session query"), ("lazy", "lazy load")):
            found.append(_sqla_target(samples, kind, f"{short}: {what} in a portal / run_sync"))
        cpu_samples: dict[str, dict[str, list[float]]] = measured.get("cpu_samples", {})
        for kind, what in (("query", "query"), ("lazy", "lazy load")):
            if cpu_samples:
                label = f"{short}: {what}, loop-thread CPU, portal / run_sync"
                found.append(_sqla_target(cpu_samples, kind, label, info=True))
    lines.append(SQLA_NOTES)
    for db in result["skipped"]:
        found.append(Target(f"{SQLA_NAMES.get(db, db)}: skipped (see above)", None, SQLA_TARGET))
    lines.append("")
    lines.append(
        f"=== TARGETS (issue 16): in a portal / AsyncSession.run_sync, same fn and session, "
        f"{result['loop']}"
    )
    lines.extend(target.line() for target in found)
    return lines
