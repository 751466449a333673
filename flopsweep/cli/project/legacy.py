"""The one-parser spellings of ``flopsweep-project`` (before its subcommands), mapped onto the subcommand they mean:
``--serve`` is ``serve``, a ``--budget-*`` is ``budget`` (as ``--usd``, ``--flops``, ...), anything else
``train``. Flags that the old command took and did nothing with in that mode are left out, and said so."""

from __future__ import annotations

import shlex

WITHOUT_VALUE = ("--serve", "--inference", "--compute-optimal", "--recompute", "--no-log", "--help")
SERVE_ONLY = ("--prompt-tokens", "--new-tokens", "--compute-efficiency", "--memory-efficiency", "--bandwidth",
              "--hardware")
BUDGETS = ("--budget-flops", "--budget-gpu-hours", "--budget-days", "--budget-usd")
IGNORED = {  # by mode: what the one parser accepted there and never read
    "train": (*SERVE_ONLY, "--tokens-per-param", "--inference-tokens"),
    "budget": SERVE_ONLY,  # --no-log and --experiment: a budget is logged now, as the others are
    "serve": ("--seq-len", "--inference", "--tokens", "--steps", "--compute-optimal", "--recompute",
              "--tokens-per-param", "--inference-tokens", "--mfu", "--mfu-from", "--dp", "--pp", "--zero",
              "--micro-batches", *BUDGETS),
}


def subcommand_meant(argv: list[str]) -> str:
    flags = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    if "--serve" in flags:
        return "serve"
    return "budget" if flags & set(BUDGETS) else "train"


def translate(argv: list[str]) -> tuple[list[str], str]:
    """The subcommand's argv for an old one, and the one-line notice that gives it."""
    subcommand = subcommand_meant(argv)
    out, dropped, i = [subcommand], [], 0
    while i < len(argv):
        flag, equals, _ = argv[i].partition("=")
        takes_next = flag.startswith("--") and flag not in WITHOUT_VALUE and not equals and i + 1 < len(argv)
        span = argv[i:i + 1 + takes_next]
        i += len(span)
        if flag == "--serve":
            continue
        if flag in IGNORED[subcommand]:
            dropped.append(flag)
        elif flag in BUDGETS:
            out += ["--" + span[0][len("--budget-"):], *span[1:]]
        else:
            out += span
    left_out = f" ({', '.join(dropped)}: did nothing here, left out)" if dropped else ""
    return out, f"flopsweep-project: note: now spelt `flopsweep-project {shlex.join(out)}`{left_out}"
