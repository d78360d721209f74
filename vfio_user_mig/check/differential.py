"""``check --against 'CMD ... {socket}'``: the same messages to the server under test and to a
reference server, and every difference in their replies.

For each random sequence (:func:`~.explore.draw_ops`), the model's oracle runs the ops against
the server under test, which fixes the exact messages (setup included); those messages are then
sent, on fresh connections, to both servers, and each pair of replies is compared: header flags,
errno, payload length, payload bytes, or how a side failed (hang, crash, close). A difference
is classified (:data:`CLASSES`) and, when one of the known-difference rules (:data:`RULES`,
from docs/wire-compat.md and the device profiles) matches, marked explained with the rule's
reason. Unexplained differences after the first one in a sequence may be its consequences
(``first`` is false). The comparison of a sequence ends where either side stops answering.

The result goes into ``Report.extra["differential"]``: the counts by class and by rule,
explained and unexplained, the most frequent kinds of difference, and each difference with its
messages (the first unexplained difference of a sequence also carries a reproducer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vfio_user_mig.check.conn import Reply
from vfio_user_mig.check.explore import draw_ops, learn_world, run_ops
from vfio_user_mig.check.findings import Report
from vfio_user_mig.check.session import Checker, SequenceAborted
from vfio_user_mig.check.steps import Step, errname
from vfio_user_mig.check.target import Target, TargetError
from vfio_user_mig.wire.constants import FeatureIndex, FeatureOp

GROUP = "differential"
#: Longest message or payload shown in a difference, in bytes (the reproducer has them whole).
SHOW = 256

#: How two replies can differ, from the most to the least severe.
CLASSES = ("hang/crash on one side", "one closes, the other answers",
           "one refuses, the other accepts", "errno differs", "header flags differ",
           "payload length differs", "payload differs")


@dataclass
class Outcome:
    """What one side did with one request: ``how`` is reply, closed, hang or crash."""

    how: str
    reply: Reply | None = None
    detail: str = ""

    def describe(self) -> dict[str, Any]:
        if self.reply is None:
            return {"how": self.how, "detail": self.detail}
        r = self.reply
        return {"how": "reply", "flags": r.flags, "errno": errname(r.errno) if r.is_error else 0,
                "payload_len": len(r.payload), "payload": r.payload[:SHOW].hex()}


def capture(target: Target, steps: list[Step], timeout: float, title: str) -> list[Outcome]:
    """Send ``steps`` on a fresh connection to ``target``; one outcome per step sent."""
    sub = Checker(target, timeout=timeout)
    out: list[Outcome] = []
    with sub.sequence(GROUP, title, setup=False) as seq:
        for step in steps:
            try:
                reply = seq.exchange(step.data, fds=step.fds, expect=step.expect, close_ok=True)
            except SequenceAborted:
                last = sub.report.findings[-1] if sub.report.findings else None
                out.append(Outcome(str(last.kind) if last else "closed", None,
                                   last.observed if last else ""))
                raise
            out.append(Outcome("reply" if reply is not None else "closed", reply))
            if reply is None:
                break
    return out


def classify(a: Outcome, b: Outcome) -> str | None:
    """The class of difference between two outcomes, ``None`` when they agree."""
    if a.how != b.how:
        if "hang" in (a.how, b.how) or "crash" in (a.how, b.how):
            return CLASSES[0]
        return CLASSES[1]
    if a.reply is None or b.reply is None:
        return None
    ra, rb = a.reply, b.reply
    if ra.is_error != rb.is_error:
        return CLASSES[2]
    if ra.errno != rb.errno:
        return CLASSES[3]
    if ra.flags != rb.flags:
        return CLASSES[4]
    if len(ra.payload) != len(rb.payload):
        return CLASSES[5]
    if ra.payload != rb.payload:
        return CLASSES[6]
    return None


@dataclass(frozen=True)
class Context:
    """What the comparison knows before a step: the target's migration state (from its
    successful SETs; ``None`` before any) and the step at which the two servers' states
    diverged (a difference on a request that changes state), if they did."""

    state: int | None
    diverged_at: int | None
    reset_since_set: bool = False


@dataclass(frozen=True)
class Rule:
    """A known difference: which replies it covers and why they may differ."""

    name: str
    reason: str
    matches: Callable[[Step, list[Step], str, Outcome, Outcome, Context], bool]


#: Requests that change what later replies depend on: a difference on one of them makes the
#: two servers' states diverge.
_STATEFUL = ("DEVICE_FEATURE", "MIG_DATA_WRITE", "MIG_DATA_READ", "DEVICE_RESET", "DMA_MAP",
             "DMA_UNMAP", "REGION_WRITE", "DEVICE_SET_IRQS")
_RESUMING = 4


def _set_target(step: Step) -> int | None:
    """The state a MIG_DEVICE_STATE SET asks for, else ``None``."""
    data = step.data
    if step.command != "DEVICE_FEATURE" or len(data) < 28:
        return None
    flags = int.from_bytes(data[20:24], "little")
    if flags & 0xFFFF != FeatureIndex.MIG_DEVICE_STATE or not flags & FeatureOp.SET:
        return None
    return int.from_bytes(data[24:28], "little")


def _is_state_get(step: Step) -> bool:
    """A MIG_DEVICE_STATE GET: when its replies differ, the two devices are in different
    states, whatever rule explains the difference, so later replies may differ too."""
    data = step.data
    if step.command != "DEVICE_FEATURE" or len(data) < 24:
        return False
    flags = int.from_bytes(data[20:24], "little")
    return flags & 0xFFFF == FeatureIndex.MIG_DEVICE_STATE and bool(flags & FeatureOp.GET)


def _feature(step: Step) -> int:
    return int.from_bytes(step.data[20:22], "little") if len(step.data) >= 24 else -1


def _both_ok(a: Outcome, b: Outcome) -> bool:
    return (a.reply is not None and b.reply is not None and not a.reply.is_error
            and not b.reply.is_error)


def _both_error(a: Outcome, b: Outcome) -> bool:
    return (a.reply is not None and b.reply is not None and a.reply.is_error
            and b.reply.is_error)


def _after_write(step: Step, before: list[Step]) -> bool:
    return any(s.command == "MIG_DATA_WRITE" for s in before)


def _target_refuses(a: Outcome, b: Outcome) -> bool:
    return (a.reply is not None and b.reply is not None and a.reply.is_error
            and not b.reply.is_error)


#: Where every rule of :data:`RULES` has its row (kept equal by a test).
RULES_DOC = "docs/wire-compat.md, section `check --against` rules"

#: Differences expected between conforming servers: one row each in :data:`RULES_DOC`.
RULES: tuple[Rule, ...] = (
    Rule("version-capabilities", "the VERSION JSON is each server's own text: formatting, "
         "limits and extra keys such as libvfio-user's migration.pgsize or our experimental "
         "x-mig-data-* keys (docs/wire-compat.md difference 8 and the experimental sections)",
         lambda s, p, c, a, b, x: s.command == "VERSION" and _both_ok(a, b)),
    Rule("device-layout", "regions, interrupts and their sizes are the device's own",
         lambda s, p, c, a, b, x: s.command in ("DEVICE_GET_INFO", "DEVICE_GET_REGION_INFO",
                                             "DEVICE_GET_IRQ_INFO") and _both_ok(a, b)),
    Rule("device-data", "region contents and the migration stream (its length too) are the "
         "device's own state; libvfio-user's sample BAR0 read gives the time elapsed",
         lambda s, p, c, a, b, x: s.command in ("REGION_READ", "MIG_DATA_READ") and _both_ok(a, b)),
    Rule("reset-state", "after DEVICE_RESET our device is RUNNING (the spec returns a device "
         "in ERROR to RUNNING, and the kernel's migration drivers reset device_state to "
         "RUNNING), libvfio-user keeps the migration state (PROTOCOL.md section 5; "
         "docs/wire-compat.md, server behaviour: DEVICE_RESET)",
         lambda s, p, c, a, b, x: x.reset_since_set and s.command == "DEVICE_FEATURE"
         and _feature(s) == FeatureIndex.MIG_DEVICE_STATE and c == CLASSES[6]),
    Rule("foreign-stream", "each server resumes from a stream saved by the server under test; "
         "a stream is device-specific, so the reference may refuse it or judge it incomplete",
         lambda s, p, c, a, b, x: s.command in ("MIG_DATA_WRITE", "DEVICE_FEATURE")
         and _after_write(s, p) and c in CLASSES[2:]),
    Rule("error-echo", "a failed DEVICE_FEATURE SET carries the echoed request in "
         "libvfio-user, the header only per the spec (docs/wire-compat.md difference 2)",
         lambda s, p, c, a, b, x: _both_error(a, b) and c == CLASSES[5]),
    Rule("reference-failure", "the reference died or stopped answering where the server under "
         "test answered: a defect of the reference, shown by checking it alone "
         "(`check --spawn REFERENCE`; libvfio-user's samples: docs/conformance/libvfio-user.md)",
         lambda s, p, c, a, b, x: c == CLASSES[0] and a.how == "reply"),
    Rule("incomplete-restore", "leaving RESUMING after an incomplete or foreign stream: our "
         "device refuses the arc (a device cannot restore state it never received; PROTOCOL.md "
         "section 5; docs/wire-compat.md, server behaviour), libvfio-user's sample accepts it "
         "(docs/conformance/libvfio-user.md S3)",
         lambda s, p, c, a, b, x: x.state == _RESUMING and _set_target(s) is not None
         and _target_refuses(a, b)),
    Rule("diverged", "the two servers' states diverged at an earlier step (a difference on a "
         "request that changes state); later replies differ as a consequence",
         lambda s, p, c, a, b, x: x.diverged_at is not None),
    Rule("dma-map-policy", "a repeated or fd-less DMA map, an unmap of an unmapped range and a "
         "dirty report of a range that is not one fd-backed map are implementation-defined "
         "(libvfio-user: exact repeats accepted, ENOENT, EINVAL/ENOTSUP)",
         lambda s, p, c, a, b, x: (s.command in ("DMA_MAP", "DMA_UNMAP")
                                or (s.command == "DEVICE_FEATURE"
                                    and _feature(s) == FeatureIndex.DMA_LOGGING_REPORT))
         and c in CLASSES[2:4]),
)


def explain(step: Step, before: list[Step], cls: str, a: Outcome, b: Outcome,
            ctx: Context = Context(None, None)) -> Rule | None:
    for rule in RULES:
        if rule.matches(step, before, cls, a, b, ctx):
            return rule
    return None


def compare(steps: list[Step], target: list[Outcome], reference: list[Outcome],
            sequence: int) -> tuple[int, list[dict[str, Any]]]:
    """(steps compared, every difference) between two outcome lists of the same steps. The
    comparison ends at the first step where either side stopped answering (hang, crash,
    close): what follows was sent to one side only."""
    diffs: list[dict[str, Any]] = []
    compared = 0
    state: int | None = None
    diverged_at: int | None = None
    reset_since_set = False
    for index, step in enumerate(steps):
        if index >= len(target) or index >= len(reference):
            break
        a, b = target[index], reference[index]
        compared += 1
        cls = classify(a, b)
        if cls is not None:
            rule = explain(step, steps[:index], cls, a, b,
                           Context(state, diverged_at, reset_since_set))
            first = rule is None and not any(d["explained"] is None for d in diffs)
            diff: dict[str, Any] = {
                "sequence": sequence, "step": index, "command": step.command, "class": cls,
                "first": first, "explained": rule.name if rule else None,
                "reason": rule.reason if rule else "", "request": step.data[:SHOW].hex(),
                "target": a.describe(), "reference": b.describe(),
            }
            if first:
                diff["reproducer"] = [s.to_json() for s in steps[:index + 1]]
            diffs.append(diff)
            if diverged_at is None and ((rule is not None and rule.name == "reset-state")
                                        or (step.command in _STATEFUL and cls != CLASSES[6])
                                        or _is_state_get(step)):
                diverged_at = index
        ok = a.reply is not None and not a.reply.is_error
        wanted = _set_target(step)
        if wanted is not None and ok:
            state, reset_since_set = wanted, False
        elif step.command == "DEVICE_RESET" and ok:
            reset_since_set = True
        if a.how != "reply" or b.how != "reply":
            break
    return compared, diffs


def run_differential(target: Target, reference: Target, runs: int, seed: int,
                     timeout: float = 2.0, generator: Target | None = None) -> Report:
    """``runs`` random sequences of ``seed`` to both servers (module docstring).

    ``generator``: the server the oracle runs against to fix the messages (default: the
    target). With ``--socket`` servers, which keep their state between connections, a third
    server of the target's kind keeps the two compared servers' histories identical."""
    checker = Checker(generator or target, timeout=timeout)
    world = learn_world(checker)
    report = Report(server=target.name, caps=checker.report.caps)
    diffs: list[dict[str, Any]] = []
    skipped = 0
    for index in range(runs):
        title = f"differential seed {seed} sequence {index}"
        steps: list[Step] = []
        try:
            run_ops(checker, world, draw_ops(seed, index), title, steps)
            ours = capture(target, steps, timeout, title)
            theirs = capture(reference, steps, timeout, title)
        except TargetError:
            skipped += 1
            continue
        compared, found = compare(steps, ours, theirs, index)
        report.checks += compared
        report.passed += compared - sum(d["explained"] is None for d in found)
        diffs.extend(found)
    report.extra["differential"] = summarise(diffs, target.name, reference.name, runs, seed,
                                             skipped)
    return report


def summarise(diffs: list[dict[str, Any]], target: str, reference: str, runs: int, seed: int,
              skipped: int) -> dict[str, Any]:
    first = [d for d in diffs if d["first"]]
    top = Counter((d["class"], d["command"], d["explained"] or "unexplained") for d in diffs)
    return {
        "target": target, "reference": reference, "seed": seed, "sequences": runs,
        "skipped": skipped, "differences": len(diffs),
        "first_unexplained": len(first),
        "explained": sum(d["explained"] is not None for d in diffs),
        "unexplained": sum(d["explained"] is None for d in diffs),
        "by_class": dict(Counter(d["class"] for d in diffs).most_common()),
        "by_rule": dict(Counter(d["explained"] or "unexplained" for d in diffs).most_common()),
        "top": [{"class": c, "command": cmd, "rule": r, "count": n}
                for (c, cmd, r), n in top.most_common(10)],
        "rules": {r.name: f"{r.reason} ({RULES_DOC}: {r.name})" for r in RULES},
        "items": diffs,
    }


__all__ = ["CLASSES", "RULES", "Outcome", "Rule", "capture", "classify", "compare", "explain",
           "run_differential"]
