"""Score requests with the published `current` version.

    python -m serving.predict --requests FILE.jsonl [--config FILE] [--set key=value] [--batch-size 1000]
                             [--precision auto|fp32|bf16]

FILE.jsonl holds one request per line: a JSON object of raw contract fields (serving.requests).
Prints one JSON line per request, {"pctr": p, "in_table": bool}, in input order, then a summary
line on stderr (requests, fallbacks, version). A malformed request stops the run with an error
naming its line and field; a tampered version refuses to load, naming the file. ``--precision``
defaults to auto: bf16 where the version was validated in bf16 and the CPU computes bf16 natively,
else fp32 (serving.predictor).
"""

from __future__ import annotations

import json
import sys

import torch

from core.cli import CliParser, report_user_error, run_cli, setup_logging
from core.config import load_config, parse_overrides
from serving.lookup import IntegrityError
from serving.predictor import AUTO, DEFAULT_PRECISION, PRECISION_TOLERANCE, PRECISIONS, Predictor
from serving.requests import RequestError


def _read_jsonl(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RequestError(f"{path}:{line_no}: not valid JSON ({e})") from None
    return records


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see module docstring)."""
    setup_logging()
    ap = CliParser(description="Score raw contract requests with the current published version.")
    ap.add_argument("--requests", required=True, help="JSON-lines file, one request object per line")
    ap.add_argument("--config", help="config file (.toml or .json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    ap.add_argument("--batch-size", type=int, default=1000, help="requests per forward pass")
    ap.add_argument("--precision", choices=(AUTO, *PRECISIONS), default=DEFAULT_PRECISION,
                    help="arithmetic of the model head: " + ", ".join(
                        f"{p} (scores within {PRECISION_TOLERANCE[p]:g} of the model's)" for p in PRECISIONS)
                    + f", or {AUTO} (bf16 if the version was validated in it and this CPU has native bf16, "
                      f"else fp32); default {DEFAULT_PRECISION}")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    torch.set_num_threads(1)
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        predictor = Predictor.from_current(cfg, precision=args.precision)
        records = _read_jsonl(args.requests)
        out = sys.stdout
        for start in range(0, len(records), args.batch_size):
            chunk = records[start:start + args.batch_size]
            try:
                result = predictor.score_records(chunk)
            except RequestError as e:  # renumber "request i" to the file's request index
                raise RequestError(f"{args.requests} (requests {start}..{start + len(chunk) - 1}): {e}") from None
            for p, hit in zip(result.scores.tolist(), result.in_table.tolist()):
                out.write(json.dumps({"pctr": p, "in_table": hit}) + "\n")
    except (RequestError, IntegrityError, FileNotFoundError, ValueError) as e:
        return report_user_error(e, args.debug)
    version = {k: predictor.version.get(k) for k in ("version", "dir", "run_date", "model_version", "reduction")}
    print(json.dumps({"requests": predictor.requests_scored, "fallbacks": predictor.fallbacks,
                      "precision": predictor.precision, **version}),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
