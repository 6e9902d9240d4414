"""The full inference benchmark, saved where the docs point: ``docs/benchmark/<name>.{txt,json,png}``.

Takes every option of ``pspnet benchmark`` (which does the measuring, see ``pspnet.export.bench``)
and adds where to save: the printed table as .txt, the whole result as .json and the chart as .png.

    python benchmarks/bench_inference.py                      # PSPNet-R50 473x473, all paths, peers, CamVid checks
    python benchmarks/bench_inference.py --compile --name cpu_compile
    python benchmarks/bench_inference.py --no-peers --no-scaling --no-slide --name quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pspnet.cli import benchmark as cli
from pspnet.export.bench import format_table, plot, run_benchmark

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmark"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any other option goes to `pspnet benchmark` (see pspnet benchmark -h).")
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    parser.add_argument("--name", default="cpu", help="file stem of the three outputs (default: cpu)")
    own, rest = parser.parse_known_args(argv)
    bench_parser = argparse.ArgumentParser(prog="bench_inference.py")
    cli.add_parser(bench_parser.add_subparsers())
    args = bench_parser.parse_args(["benchmark", *rest])
    result = run_benchmark(cli.config_from_args(args), lambda msg: print(msg, file=sys.stderr, flush=True))
    table = format_table(result)
    print(table)
    own.out_dir.mkdir(parents=True, exist_ok=True)
    stem = own.out_dir / own.name
    stem.with_suffix(".txt").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.txt, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
