"""The robustness report: compute every figure into a results file, then render docs from it.

    python -m reports run --plan core --threads 1                 # resumable; per-cell cache
    python -m reports run --plan core --threads 1 --shard 1/2     # a second process, other cells
    python -m reports render                                      # every page and README block, figures
    python -m reports all --plan tiny --root /tmp/r --docs /tmp/d  # CI: a tiny plan end to end

``run`` trains any checkpoint of the plan that is missing (its training command is in the
plan and lands in the results), then computes each cell (one checkpoint x one measurement),
caching each as JSON under ``--cache`` so an interrupted run resumes where it stopped, and
writes the results file (``docs/results/robustness.json`` by default). ``render`` writes
``docs/robustness.md`` and PNG figures from that file alone, then (for the default plan) every
other generated page and README block from its results file (``render_pages``): the paired
comparisons, the curves past the training radius, out-of-distribution detection and the README's
first table. No number in the docs is typed by hand. A cell is recomputed when its checkpoint changed (the cache keys on the model id)
or its parameters did.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from .plan import CACHE, PLANS, REPO, RESULTS, run_plan


def main(argv: list[str] | None = None) -> None:
    from .render import render

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(
        prog="python -m reports", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=("run", "render", "all"))
    p.add_argument("--plan", choices=sorted(PLANS), default="core")
    p.add_argument(
        "--out", type=Path, default=None, help=f"results file (default {RESULTS}; tiny: <root>/results.json)"
    )
    p.add_argument("--cache", type=Path, default=None, help=f"per-cell cache (default {CACHE}; tiny: <root>/cache)")
    p.add_argument("--root", type=Path, default=None, help="tiny plan: where its checkpoints go (required for tiny)")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where robustness.md and figures/ go")
    p.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also refresh this README's generated block (default: README.md, none for the tiny plan)",
    )
    p.add_argument("--shard", default="0/1", help="i/n: compute every n-th cell starting at i (parallel processes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the plan's)")
    args = p.parse_args(argv)
    plan = PLANS[args.plan]
    if args.threads:
        plan = dataclasses.replace(plan, threads=args.threads)
    root = args.root
    if plan.name == "tiny" and root is None:
        raise SystemExit("--plan tiny needs --root DIR (where its checkpoints, cache and results go)")
    out = args.out or (root / "results.json" if root is not None else RESULTS)
    cache = args.cache or (root / "cache" if root is not None else CACHE)
    i, n = (int(v) for v in args.shard.split("/"))
    if args.command in ("run", "all"):
        run_plan(plan, cache=cache, out=out, root=root, shard=(i, n))
    if args.command in ("render", "all"):
        readme = args.readme or (REPO / "README.md" if plan.name != "tiny" else None)
        render(json.loads(out.read_text()), args.docs, results_path=out, readme=readme)
        if plan.name != "tiny":
            render_pages(args.docs, readme)


def render_pages(docs: Path, readme: Path | None) -> list[str]:
    """Re-render the issue-16 pages (paired comparisons, curves, OOD) and the README's first table from their
    results files under ``docs/results`` (each module's own ``render``; a missing results file is skipped);
    returns what was written."""
    from . import curves, headline, ood, paired

    results = docs / "results"
    written = []
    for source, page, against in PAIRED_PAGES:
        if (results / source).is_file():
            data = json.loads((results / source).read_text())
            other = json.loads((results / against).read_text()) if against and (results / against).is_file() else None
            label = f"{docs.name}/results/"
            (docs / page).write_text(paired.render(data, label + source, other, label + against if other else ""))
            if readme is not None and source == paired.RESULTS.name:
                paired.write_readme_block(readme, data)
            written.append(page)
    if (results / curves.RESULTS.name).is_file():
        data = json.loads((results / curves.RESULTS.name).read_text())
        curves.figure(data, docs / "figures" / curves.FIGURE.name)
        label = f"{docs.name}/results/{curves.RESULTS.name}"
        (docs / curves.PAGE.name).write_text(curves.render(data, f"figures/{curves.FIGURE.name}", label))
        written.append(curves.PAGE.name)
    if (results / ood.RESULTS.name).is_file():
        argv = ["render", "--results", str(results / ood.RESULTS.name), "--out", str(docs / ood.PAGE.name)]
        ood.main(argv + (["--readme", str(readme)] if readme is not None else []))
        written.append(ood.PAGE.name)
    if readme is not None and (results / headline.PAIRED.name).is_file():
        sources = {"--paired": headline.PAIRED, "--seed1": headline.SEED1, "--curves": headline.CURVES}
        argv = [
            part for flag, f in {**sources, "--ood": headline.OOD}.items() for part in (flag, str(results / f.name))
        ]
        headline.main([*argv, "--readme", str(readme)])
        written.append(f"{readme.name} (headline)")
    return written


PAIRED_PAGES = (
    ("paired.json", "paired.md", None),
    ("paired-seed1.json", "paired-seed1.md", None),
    ("paired-flags.json", "paired-flags.md", None),
    ("paired-full100.json", "paired-full100.md", "paired.json"),
)
"""``python -m reports.paired``'s results files and their pages: the committed pair and candidates (seed 0),
the same recipes trained with ``--seed 1``, the served recipe under each flag rule, and the served pair under
the full (not reduced) ``adaptive`` suite on the first 100 inputs, counted beside the reduced suite's outcomes on
those inputs (the third field: the results it is read against)."""


if __name__ == "__main__":
    main()
